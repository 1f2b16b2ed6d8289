"""Attention as explanation in the browser: one self-contained HTML page per person crop (paper Sec. 3.3, Eq. 4).

The page needs no server and no network (file://, an MLflow artifact view, offline): the crop is a PNG data
URI, the maps are base64 in the page and the script is inline. It shows the crop with its predicted skeleton;
clicking a keypoint shows its dependency area A[i, :] of the chosen layer's head-averaged attention (i = its
token by the reference's visualisation rule, `transpose.explain.keypoint_tokens`), clicking anywhere else the
dependency area of the token under the click. A toggle switches to affected areas A[:, j], a slider picks the
layer, and entries below delta are cut (Eq. 4; default `default_threshold`: 0.01 for R, 0.00075 for H). Maps are
upsampled bilinearly by the stride to the crop, as `AttentionAreas.upsampled` does.

Stored per layer and query token: its row A[q, :] and its column A[:, q], each as uint8 of the map over its
own maximum, with the maximum as float32 (value = byte / 255 * max; a column read from per-row bytes would lose
its small entries). With 1/8 tokens (TransPose-R at 256x192: L = 768) every token is a query. With 1/4 tokens
(TransPose-H: L = 3072, 4-6 layers) the query locations are sub-sampled to every s-th token row and column, s
the smallest that keeps the page under `max_bytes`; keypoint tokens are always exact, a click elsewhere shows
the nearest stored token, and the page says so.

For tests the page keeps its state in `window.explainState`: layer (0-based), mode ("dependency" | "affected"),
query_token, query_keypoint (index, or null for a clicked location), threshold, shown_map_argmax_token (null
when delta cuts the whole map), shown_map_max, query_step, ready. Controls: #view (the canvas), #layer, #affected,
#threshold, #threshold-reset, #kp-0 ... #kp-(K-1).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from transpose.explain import attention_maps, default_threshold, keypoint_tokens
from transpose.inference import normalize
from transpose.keypoints import KeypointSet

DEFAULT_MAX_BYTES = 10_000_000  # a TransPose-H-A6 page (3072 tokens, 6 layers) at 256x192 stays under it
_MARGIN = 64_000  # bytes kept free for the query list and labels beside the fixed part of the page


def query_tokens(grid: tuple[int, int], step: int, keypoint_tokens: np.ndarray) -> np.ndarray:
    """Stored query tokens, sorted: every `step`-th token row and column (from 0) and every keypoint's token."""
    h, w = grid
    rows, cols = np.meshgrid(np.arange(0, h, step), np.arange(0, w, step), indexing="ij")
    return np.union1d((rows * w + cols).ravel(), np.asarray(keypoint_tokens, dtype=np.int64))


def quantise(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., L] non-negative -> (uint8 [..., L] of each row over its max, the max as float32 [...])."""
    top = rows.max(axis=-1).astype(np.float32)
    safe = np.where(top > 0, top, 1.0)[..., None]
    return np.rint(rows / safe * 255.0).astype(np.uint8), top


def payload_bytes(num_layers: int, grid: tuple[int, int], step: int, keypoint_tokens: np.ndarray) -> int:
    """Base64 size of the stored maps at a query step: a row and a column of L bytes and a float32 max each."""
    length = grid[0] * grid[1]
    queries = len(query_tokens(grid, step, keypoint_tokens))
    return 2 * (4 * math.ceil(num_layers * queries * (length + 4) / 3) + 8)


def choose_query_step(
    num_layers: int, grid: tuple[int, int], keypoint_tokens: np.ndarray, budget: int, where: str
) -> int:
    """The smallest query step whose maps fit in `budget` bytes (1: every token)."""
    for step in range(1, max(grid) + 1):
        if payload_bytes(num_layers, grid, step, keypoint_tokens) <= budget:
            return step
    need = payload_bytes(num_layers, grid, max(grid), keypoint_tokens)
    raise ValueError(
        f"{where}: {num_layers} layers of {grid[0]}x{grid[1]} tokens need {need / 1e6:.1f} MB even with only the "
        f"keypoint tokens as queries, over the {budget / 1e6:.1f} MB left of max_bytes: raise max_bytes"
    )


def encode_maps(maps: np.ndarray, queries: np.ndarray) -> dict[str, str]:
    """Base64 of the quantised rows A[q, :] ([layers, Q, L] bytes, [layers, Q] float32 maxima) and of the
    columns A[:, q] the same way."""
    rows, row_scales = quantise(maps[:, queries, :])
    cols, col_scales = quantise(maps[:, :, queries].transpose(0, 2, 1))
    return {
        "rows": _b64(rows),
        "row_scales": _b64(row_scales.astype("<f4")),
        "cols": _b64(cols),
        "col_scales": _b64(col_scales.astype("<f4")),
    }


def png_data_uri(image_rgb: np.ndarray) -> str:
    """uint8 [h, w, 3] RGB as a data:image/png URI."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the crop as PNG")
    return "data:image/png;base64," + _b64(png)


def model_input(crop_rgb: np.ndarray, mean, std) -> torch.Tensor:
    """The normalised [3, h, w] input of a uint8 crop (`transpose.inference.normalize`) or of a float crop in
    [0, 1] (a validation batch's image with its normalisation undone)."""
    if crop_rgb.dtype == np.uint8:
        return normalize(crop_rgb[None], mean, std)[0]
    x = torch.from_numpy(np.ascontiguousarray(crop_rgb, dtype=np.float32))
    return ((x - torch.tensor(mean)) / torch.tensor(std)).permute(2, 0, 1).contiguous()


def write_explanation_page(
    model: torch.nn.Module,
    crop_rgb: np.ndarray,
    keypoint_set: KeypointSet,
    out_path: str | Path,
    title: str = "",
    threshold: float | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    model_name: str | None = None,
) -> Path:
    """Run the attention path on one person crop and write its explanation page.

    Args:
        model: a TransPose model; `crop_rgb` is cut at its input size (`transpose.crops.crop`).
        crop_rgb: [h, w, 3] RGB, uint8 or float in [0, 1].
        keypoint_set: the model's keypoints (its card's): names and skeleton.
        out_path: the .html file to write.
        title: the page's heading (default: the model name).
        threshold: delta of Eq. 4, the page's starting value (default `default_threshold(model.stride)`).
        max_bytes: the page's size limit; the query locations are sub-sampled to stay under it.
        model_name: shown on the page (default: the model's class name).
    """
    out_path = Path(out_path)
    cfg = model.data_config
    h, w = cfg.image_size
    if crop_rgb.shape != (h, w, 3):
        raise ValueError(f"{out_path}: the crop is {crop_rgb.shape}, the model takes ({h}, {w}, 3) RGB crops")
    if keypoint_set.num_keypoints != model.num_keypoints:
        raise ValueError(
            f"{out_path}: keypoint set {keypoint_set.name!r} has {keypoint_set.num_keypoints} keypoints, "
            f"the model predicts {model.num_keypoints}"
        )
    delta = default_threshold(model.stride) if threshold is None else float(threshold)
    if not delta >= 0:
        raise ValueError(f"{out_path}: threshold (delta) must be >= 0, got {threshold}")
    maps, coords_hm, scores = attention_maps(model, model_input(crop_rgb, cfg.mean, cfg.std))
    if not (np.isfinite(maps).all() and np.isfinite(scores).all()):
        raise ValueError(f"{out_path}: the model's attention or heatmaps are not finite (NaN/inf weights?)")
    codec = cfg.codec()
    grid = (h // model.stride, w // model.stride)
    tokens = keypoint_tokens(coords_hm, grid, model.stride, codec)
    image = crop_rgb if crop_rgb.dtype == np.uint8 else np.rint(np.clip(crop_rgb, 0, 1) * 255).astype(np.uint8)
    meta = {
        "title": title,
        "model": model_name or type(model).__name__,
        "keypoint_set": keypoint_set.name,
        "names": list(keypoint_set.names),
        "skeleton": [list(p) for p in keypoint_set.skeleton],
        "keypoints": np.round(codec.heatmap_to_crop(coords_hm), 3).tolist(),
        "scores": np.round(scores.astype(np.float64), 4).tolist(),
        "keypoint_tokens": tokens.tolist(),
        "token_grid": list(grid),
        "stride": model.stride,
        "crop_size": [h, w],
        "num_layers": len(maps),
        "threshold": delta,
        "zoom": max(1, round(512 / h)),
    }
    picture = png_data_uri(image)
    fixed = len(render_page(meta, {"image": picture}).encode())
    step = choose_query_step(len(maps), grid, tokens, max_bytes - fixed - _MARGIN, str(out_path))
    queries = query_tokens(grid, step, tokens)
    meta.update(query_step=step, queries=queries.tolist())
    meta["note"] = sampling_note(step, len(queries), grid, len(tokens))
    page = render_page(meta, {"image": picture, **encode_maps(maps, queries)}).encode()
    if len(page) > max_bytes:
        raise ValueError(f"{out_path}: the page is {len(page)} bytes, over max_bytes={max_bytes}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(page)
    return out_path


def sampling_note(step: int, queries: int, grid: tuple[int, int], num_keypoints: int) -> str:
    """What the page says about its stored query locations."""
    length = grid[0] * grid[1]
    if queries == length:
        return f"Every one of the {length} tokens is stored as a query: a click shows the token under it."
    return (
        f"Query locations are sub-sampled to keep the page small: every {_ordinal(step)} token row and column "
        f"({queries} of {length} tokens with the {num_keypoints} keypoint tokens, which are exact). A click "
        "away from a keypoint shows the nearest stored token (its cell is outlined); the maps themselves are "
        f"complete ({grid[0]}x{grid[1]})."
    )


def render_page(meta: dict, data: dict) -> str:
    """The HTML: head, body, the meta and data JSON, the script."""
    heading = meta["title"] or meta["model"]
    return (
        _HEAD.replace("{title}", html.escape(heading))
        + _BODY
        + f'<script type="application/json" id="explain-meta">{_json(meta)}</script>\n'
        + f'<script type="application/json" id="explain-data">{_json(data)}</script>\n'
        + f"<script>\n{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _json(value) -> str:
    """JSON safe inside <script>: no '<' that could close it."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; }
#subtitle { color: #555; margin: 0 0 12px; }
main { display: flex; gap: 20px; align-items: flex-start; flex-wrap: wrap; }
#view { cursor: crosshair; border: 1px solid #999; }
.panel { max-width: 480px; }
.panel label { display: block; margin: 6px 0; }
#threshold { width: 7em; }
#query-label { font-weight: 600; min-height: 2.9em; }
#keypoints button { margin: 2px; padding: 1px 6px; border: 1px solid #aaa; border-left-width: 5px;
  background: #f6f6f6; border-radius: 3px; cursor: pointer; font-size: 12px; }
#keypoints button.selected { background: #333; color: #fff; }
.cbar { display: flex; justify-content: space-between; width: 256px; font-size: 12px; color: #555; }
.note { color: #555; font-size: 12px; }
</style>
</head>
<body>
"""

_BODY = """<h1 id="title"></h1>
<p id="subtitle"></p>
<main>
<canvas id="view"></canvas>
<div class="panel">
  <label>layer <input type="range" id="layer" step="1"> <span id="layer-label"></span></label>
  <label><input type="checkbox" id="affected"> affected areas A[:, j]: which locations attend to the query
    (off: dependency areas A[i, :], where the query attends)</label>
  <label>delta <input type="number" id="threshold" min="0" step="any"> <button id="threshold-reset">default</button>
    <span class="note">entries below it are cut (Eq. 4)</span></label>
  <p id="query-label"></p>
  <canvas id="colorbar" width="256" height="12"></canvas>
  <div class="cbar"><span>0</span><span id="cbar-max"></span></div>
  <p class="note">Keypoints (click one, or its name; left limbs blue, right orange):</p>
  <div id="keypoints"></div>
  <p class="note" id="note"></p>
  <p class="note">A: the chosen layer's attention, softmax(QK^T / sqrt(d/heads)) averaged over the heads.
    A keypoint's token follows the reference's rule: heatmap p -> input pixel p * 4 + 0.5, integer-divided by
    the token stride. Maps are upsampled bilinearly by the stride and coloured jet from 0 to their maximum;
    the white ring marks the query, the magenta square the map's largest entry.</p>
</div>
</main>
"""

_SCRIPT = r""""use strict";
(function () {
  const meta = JSON.parse(document.getElementById("explain-meta").textContent);
  const data = JSON.parse(document.getElementById("explain-data").textContent);
  const [gh, gw] = meta.token_grid, L = gh * gw, [H, W] = meta.crop_size;
  const stride = meta.stride, zoom = meta.zoom, layers = meta.num_layers, K = meta.names.length;

  function bytes(b64) {
    const text = atob(b64), out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }
  function floats(b64) {
    const raw = bytes(b64), view = new DataView(raw.buffer), out = new Float32Array(raw.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
    return out;
  }
  const rows = bytes(data.rows), rowScales = floats(data.row_scales);
  const cols = bytes(data.cols), colScales = floats(data.col_scales);
  const queries = meta.queries, Q = queries.length, slot = new Map(queries.map((t, i) => [t, i]));

  // The stored map of a query token: its row A[q, :] (dependency) or column A[:, q] (affected).
  function storedMap(layer, mode, token) {
    const out = new Float32Array(L);
    const src = mode === "affected" ? cols : rows, scales = mode === "affected" ? colScales : rowScales;
    const k = layer * Q + slot.get(token), scale = scales[k] / 255, offset = k * L;
    for (let j = 0; j < L; j++) out[j] = src[offset + j] * scale;
    return out;
  }
  // The token under a click if it is stored, else the nearest stored one on the sub-sampled grid.
  function storedToken(row, col) {
    if (slot.has(row * gw + col)) return row * gw + col;
    const s = meta.query_step, snap = (v, n) => Math.min(Math.round(v / s), Math.floor((n - 1) / s)) * s;
    return snap(row, gh) * gw + snap(col, gw);
  }
  // Bilinear upsampling by the stride, align_corners=False (as torch's F.interpolate).
  function upsample(map) {
    const out = new Float32Array(H * W);
    const axis = (i, n) => {
      const src = Math.max((i + 0.5) / stride - 0.5, 0), i0 = Math.min(Math.floor(src), n - 1);
      return [i0, Math.min(i0 + 1, n - 1), src - i0];
    };
    for (let y = 0; y < H; y++) {
      const [y0, y1, fy] = axis(y, gh);
      for (let x = 0; x < W; x++) {
        const [x0, x1, fx] = axis(x, gw);
        const top = (1 - fx) * map[y0 * gw + x0] + fx * map[y0 * gw + x1];
        const bottom = (1 - fx) * map[y1 * gw + x0] + fx * map[y1 * gw + x1];
        out[y * W + x] = (1 - fy) * top + fy * bottom;
      }
    }
    return out;
  }
  function jet(v) {
    const c = (x) => Math.round(255 * Math.max(0, Math.min(1, 1.5 - Math.abs(4 * v - x))));
    return [c(3), c(2), c(1)];
  }
  const sideColour = (a, b) => {
    const side = meta.names[a] + meta.names[b];
    return side.includes("left") ? "#1f77b4" : side.includes("right") ? "#ff7f0e" : "#2ca02c";
  };

  const view = document.getElementById("view"), ctx = view.getContext("2d");
  view.width = W * zoom;
  view.height = H * zoom;
  const overlay = document.createElement("canvas"), octx = overlay.getContext("2d");
  overlay.width = W;
  overlay.height = H;
  const best = meta.scores.indexOf(Math.max(...meta.scores));
  const state = {
    layer: layers - 1, mode: "dependency", query_token: meta.keypoint_tokens[best], query_keypoint: best,
    threshold: meta.threshold, shown_map_argmax_token: null, shown_map_max: 0, query_step: meta.query_step,
    num_layers: layers, ready: false,
  };
  window.explainState = state;

  const image = new Image();
  const layer = document.getElementById("layer"), affected = document.getElementById("affected");
  const threshold = document.getElementById("threshold");
  layer.min = 0;
  layer.max = layers - 1;
  layer.value = state.layer;
  threshold.value = meta.threshold;

  function cell(token, colour, width) {
    const r = Math.floor(token / gw), c = token % gw, size = stride * zoom;
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.strokeRect(c * size, r * size, size, size);
  }
  function drawSkeleton() {
    const at = (k) => [(meta.keypoints[k][0] + 0.5) * zoom, (meta.keypoints[k][1] + 0.5) * zoom];
    ctx.lineWidth = 2;
    for (const [a, b] of meta.skeleton) {
      if (!(meta.scores[a] > 0 && meta.scores[b] > 0)) continue;
      ctx.strokeStyle = sideColour(a, b);
      ctx.beginPath();
      ctx.moveTo(...at(a));
      ctx.lineTo(...at(b));
      ctx.stroke();
    }
    for (let k = 0; k < K; k++) {
      if (!(meta.scores[k] > 0) && k !== state.query_keypoint) continue;
      const [x, y] = at(k);
      ctx.fillStyle = "red";
      ctx.beginPath();
      ctx.arc(x, y, 3, 0, 2 * Math.PI);
      ctx.fill();
      if (k === state.query_keypoint) {
        ctx.strokeStyle = "white";
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.arc(x, y, 8, 0, 2 * Math.PI);
        ctx.stroke();
      }
    }
  }
  function labels() {
    const r = Math.floor(state.query_token / gw), c = state.query_token % gw;
    const what = state.query_keypoint === null ? "location" : meta.names[state.query_keypoint];
    const area = state.mode === "dependency" ? "dependency area A[i, :]" : "affected area A[:, j]";
    const peak = state.shown_map_argmax_token === null ? "delta cuts every entry"
      : "largest entry " + state.shown_map_max.toPrecision(3) + " at token " + state.shown_map_argmax_token;
    document.getElementById("query-label").textContent = area + " of " + what + " (token " + state.query_token +
      ": row " + r + ", column " + c + "), layer " + (state.layer + 1) + ", delta " + state.threshold + "; " + peak;
    document.getElementById("layer-label").textContent = "layer " + (state.layer + 1) + " of " + layers;
    document.getElementById("cbar-max").textContent = state.shown_map_max.toPrecision(3);
    for (let k = 0; k < K; k++) {
      document.getElementById("kp-" + k).classList.toggle("selected", k === state.query_keypoint);
    }
  }
  function render() {
    const map = storedMap(state.layer, state.mode, state.query_token);
    let arg = -1, top = 0;
    for (let j = 0; j < L; j++) {
      if (map[j] < state.threshold) map[j] = 0;
      if (map[j] > top) { top = map[j]; arg = j; }
    }
    state.shown_map_argmax_token = arg >= 0 ? arg : null;
    state.shown_map_max = top;
    const up = upsample(map), pixels = octx.createImageData(W, H);
    for (let p = 0; p < H * W; p++) {
      const [r, g, b] = jet(top > 0 ? up[p] / top : 0);
      pixels.data.set([r, g, b, 255], 4 * p);
    }
    octx.putImageData(pixels, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.globalAlpha = 1;
    ctx.drawImage(image, 0, 0, view.width, view.height);
    ctx.globalAlpha = 0.5;
    ctx.drawImage(overlay, 0, 0, view.width, view.height);
    ctx.globalAlpha = 1;
    drawSkeleton();
    if (state.query_keypoint === null) cell(state.query_token, "white", 2);
    if (state.shown_map_argmax_token !== null) cell(state.shown_map_argmax_token, "magenta", 2);
    labels();
  }
  function selectKeypoint(k) {
    state.query_keypoint = k;
    state.query_token = meta.keypoint_tokens[k];
    render();
  }

  document.getElementById("title").textContent = meta.title || meta.model;
  document.getElementById("subtitle").textContent = "model " + meta.model + " | keypoints " + meta.keypoint_set +
    " (" + K + ") | crop " + H + "x" + W + " | tokens " + gh + "x" + gw + " (stride " + stride + ", " + L +
    ") | " + layers + " encoder layers | default delta " + meta.threshold;
  document.getElementById("note").textContent = meta.note;
  const list = document.getElementById("keypoints");
  for (let k = 0; k < K; k++) {
    const button = document.createElement("button");
    button.id = "kp-" + k;
    button.textContent = meta.names[k] + " " + meta.scores[k].toPrecision(2);
    button.style.borderLeftColor = sideColour(k, k);
    button.addEventListener("click", () => selectKeypoint(k));
    list.appendChild(button);
  }
  const bar = document.getElementById("colorbar").getContext("2d");
  for (let x = 0; x < 256; x++) {
    const [r, g, b] = jet(x / 255);
    bar.fillStyle = "rgb(" + r + "," + g + "," + b + ")";
    bar.fillRect(x, 0, 1, 12);
  }

  view.addEventListener("click", (event) => {
    const rect = view.getBoundingClientRect();
    const x = (event.clientX - rect.left) * view.width / rect.width;
    const y = (event.clientY - rect.top) * view.height / rect.height;
    let hit = null, nearest = Math.max(6, 2 * zoom);
    for (let k = 0; k < K; k++) {
      if (!(meta.scores[k] > 0)) continue;
      const d = Math.hypot((meta.keypoints[k][0] + 0.5) * zoom - x, (meta.keypoints[k][1] + 0.5) * zoom - y);
      if (d <= nearest) { nearest = d; hit = k; }
    }
    if (hit !== null) return selectKeypoint(hit);
    const row = Math.min(gh - 1, Math.max(0, Math.floor(y / zoom / stride)));
    const col = Math.min(gw - 1, Math.max(0, Math.floor(x / zoom / stride)));
    state.query_keypoint = null;
    state.query_token = storedToken(row, col);
    render();
  });
  layer.addEventListener("input", () => { state.layer = Number(layer.value); render(); });
  affected.addEventListener("change", () => { state.mode = affected.checked ? "affected" : "dependency"; render(); });
  threshold.addEventListener("input", () => {
    const value = Number(threshold.value);
    if (threshold.value !== "" && Number.isFinite(value) && value >= 0) { state.threshold = value; render(); }
  });
  document.getElementById("threshold-reset").addEventListener("click", () => {
    threshold.value = meta.threshold;
    state.threshold = meta.threshold;
    render();
  });
  image.onload = () => { render(); state.ready = true; };
  image.src = data.image;
})();
"""
