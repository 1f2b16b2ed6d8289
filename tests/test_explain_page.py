"""The explanation page in a real browser (headless Chromium through Selenium): a click on a predicted keypoint
shows its row of the chosen layer's attention, the layer slider and the affected toggle change it as the
attention computed here in Python says; an H-model page stays under its size limit; the evaluation writes one.

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run
installs them) and selenium (the dev extra); without the browser the browser tests are skipped.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from transpose.crops import crop, read_image_rgb
from transpose.explain import attention_maps, keypoint_tokens
from transpose.explain_page import DEFAULT_MAX_BYTES, model_input, quantise, query_tokens, write_explanation_page
from transpose.geometry import box_to_center_scale
from transpose.keypoints import COCO, MPII
from transpose.models import ModelCard, create_model

BOX = [280, 44, 218, 346]  # the skier of coco/000000000785.jpg
NEAR = 254.5 / 255  # entries at least this fraction of their row's max store as 255, the row's max at 8 bits


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, one for the module."""
    paths = {name: shutil.which(name) or f"/usr/bin/{name}" for name in ("chromium", "chromedriver")}
    missing = [name for name, path in paths.items() if not Path(path).is_file()]
    if missing:
        pytest.skip(
            f"no {' or '.join(missing)}: the page test needs a browser (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver  # the dev extra: pip install -e '.[dev]'
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths["chromium"]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(paths["chromedriver"]), options=options)
    yield driver
    driver.quit()


def photo_crop(realdata: Path, model) -> np.ndarray:
    h, w = model.image_size
    center, scale = box_to_center_scale(BOX, w / h)
    return crop(read_image_rgb(realdata / "coco" / "000000000785.jpg"), center, scale, (h, w))


def sharpen(model, factor: float = 4.0):
    """Random weights attend almost uniformly: every row ties at 8 bits. Scaling W_q and W_k by `factor` scales
    the logits by factor^2, so most rows get one clear maximum."""
    with torch.no_grad():
        for layer in model.global_encoder.layers:
            d = layer.self_attn.in_proj_weight.shape[1]
            layer.self_attn.in_proj_weight[: 2 * d] *= factor
    return model.eval()


def python_side(model, crop_rgb: np.ndarray):
    """What the page should show, computed here: (maps [layers, L, L], keypoint tokens, keypoints in crop pixels)."""
    cfg = model.data_config
    maps, coords_hm, scores = attention_maps(model, model_input(crop_rgb, cfg.mean, cfg.std))
    codec = cfg.codec()
    grid = (cfg.image_size[0] // model.stride, cfg.image_size[1] // model.stride)
    return maps, keypoint_tokens(coords_hm, grid, model.stride, codec), codec.heatmap_to_crop(coords_hm), scores


def page_meta(page: Path) -> dict:
    return json.loads(re.search(r'id="explain-meta">(.*?)</script>', page.read_text()).group(1))


def open_page(driver, page: Path) -> dict:
    driver.get(page.resolve().as_uri())
    return wait_ready(driver)


def wait_ready(driver) -> dict:
    """The page's state once it has decoded its maps and drawn the first one."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return !!(window.explainState || {}).ready"))
    return state(driver)


def state(driver) -> dict:
    return driver.execute_script("return window.explainState")


def click_crop(driver, x: float, y: float, crop_size: tuple[int, int]) -> dict:
    """Click the canvas where crop pixel (x, y) is drawn (Selenium offsets are from the element's centre)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "view")
    rect = canvas.rect
    sx, sy = rect["width"] / crop_size[1], rect["height"] / crop_size[0]
    dx, dy = round((x + 0.5) * sx - rect["width"] / 2), round((y + 0.5) * sy - rect["height"] / 2)
    ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click().perform()
    return state(driver)


def clear_max(values: np.ndarray) -> bool:
    """One entry is the maximum also at the page's 8 bits (no tie after quantising)."""
    top2 = np.sort(values)[-2:]
    return bool(top2[0] < top2[1] * NEAR)


def isolated(keypoints: np.ndarray, scores: np.ndarray, k: int, pixels: float) -> bool:
    """Keypoint k is drawn and no other drawn keypoint is within `pixels` crop pixels of it."""
    others = [j for j in range(len(keypoints)) if j != k and scores[j] > 0]
    return scores[k] > 0 and all(np.hypot(*(keypoints[j] - keypoints[k])) > pixels for j in others)


def test_clicks_show_the_keypoints_row_then_another_layer_then_its_column(browser, realdata, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    torch.manual_seed(0)
    model = sharpen(create_model("transpose_r_tiny"))  # 128x96 crop, 16x12 tokens (stride 8), 3 layers
    crop_rgb = photo_crop(realdata, model)
    # delta 0: random attention rarely reaches the paper's 0.01, and a cut map has no argmax to compare
    page = write_explanation_page(model, crop_rgb, COCO, tmp_path / "r.html", threshold=0.0, model_name="r_tiny")
    maps, tokens, keypoints, scores = python_side(model, crop_rgb)
    last, size, gw = len(maps) - 1, model.image_size, model.image_size[1] // model.stride
    k = next(
        k
        for k in range(len(tokens))
        if isolated(keypoints, scores, k, 4)
        and clear_max(maps[last, tokens[k]])
        and clear_max(maps[last - 1, tokens[k]])
        and clear_max(maps[last - 1, :, tokens[k]])
    )
    first = open_page(browser, page)
    assert (first["layer"], first["mode"], first["query_step"], first["threshold"]) == (last, "dependency", 1, 0)

    shown = click_crop(browser, *keypoints[k], size)
    assert (shown["query_keypoint"], shown["query_token"]) == (k, tokens[k])
    assert shown["shown_map_argmax_token"] == maps[last, tokens[k]].argmax()  # the dependency area A[i, :]

    browser.find_element(By.ID, "layer").send_keys(Keys.ARROW_LEFT)
    shown = state(browser)
    assert (shown["layer"], shown["query_token"]) == (last - 1, tokens[k])
    assert shown["shown_map_argmax_token"] == maps[last - 1, tokens[k]].argmax()

    browser.find_element(By.ID, "affected").click()
    shown = state(browser)
    assert shown["mode"] == "affected" and shown["shown_map_argmax_token"] == maps[last - 1, :, tokens[k]].argmax()

    # any other location: R stores every token, so the one under the click; the centre of a token far from keypoints
    centres = [(r, c) for r in range(size[0] // 8) for c in range(gw)]
    far = [(r, c) for r, c in centres if np.hypot(*(keypoints - [c * 8 + 3.5, r * 8 + 3.5]).T).min() > 12]
    r, c = next((r, c) for r, c in far if clear_max(maps[last - 1, :, r * gw + c]))
    shown = click_crop(browser, c * 8 + 3.5, r * 8 + 3.5, size)
    assert (shown["query_keypoint"], shown["query_token"]) == (None, r * gw + c)
    assert shown["shown_map_argmax_token"] == maps[last - 1, :, r * gw + c].argmax()

    delta = browser.find_element(By.ID, "threshold")
    delta.clear()
    delta.send_keys("1")  # above every entry: Eq. 4 cuts the whole map
    assert (state(browser)["threshold"], state(browser)["shown_map_argmax_token"]) == (1, None)
    browser.find_element(By.ID, "kp-0").click()
    assert (state(browser)["query_keypoint"], state(browser)["query_token"]) == (0, tokens[0])
    browser.find_element(By.ID, "threshold-reset").click()
    assert state(browser)["threshold"] == 0 and state(browser)["shown_map_argmax_token"] is not None
    assert "http" not in page.read_text()  # nothing to fetch: the page works offline
    assert browser.get_screenshot_as_png()[:4] == b"\x89PNG"


def test_the_page_runs_in_a_sandboxed_frame_as_mlflow_shows_artifacts(browser, realdata, tmp_path):
    # MLflow's artifact view: <iframe sandbox="allow-scripts"> of the file, an opaque origin with no storage
    from selenium.webdriver.common.by import By

    model = create_model("transpose_r_tiny").eval()
    page = write_explanation_page(model, photo_crop(realdata, model), COCO, tmp_path / "p.html", threshold=0.0)
    source = html.escape(page.read_text())
    frame = f'<iframe id="artifact" sandbox="allow-scripts" width="1200" height="760" srcdoc="{source}">'
    (tmp_path / "mlflow.html").write_text(f"<!DOCTYPE html><html><body>{frame}</iframe></body></html>")
    browser.get((tmp_path / "mlflow.html").as_uri())
    browser.switch_to.frame("artifact")
    try:
        assert wait_ready(browser)["query_step"] == 1
        browser.find_element(By.ID, "kp-5").click()
        shown = state(browser)
        assert shown["query_keypoint"] == 5 and shown["shown_map_argmax_token"] is not None
    finally:
        browser.switch_to.default_content()


def test_an_h_page_stays_under_the_limit_with_exact_keypoint_tokens(browser, realdata, tmp_path):
    torch.manual_seed(0)
    model = create_model("transpose_h_a6").eval()  # 256x192 crop, 64x48 = 3072 tokens (stride 4), 6 layers
    crop_rgb = photo_crop(realdata, model)
    page = write_explanation_page(model, crop_rgb, COCO, tmp_path / "h.html", model_name="transpose_h_a6")
    assert page.stat().st_size <= DEFAULT_MAX_BYTES
    maps, tokens, keypoints, scores = python_side(model, crop_rgb)
    meta = page_meta(page)
    step = meta["query_step"]
    assert step > 1 and meta["queries"] == query_tokens((64, 48), step, tokens).tolist()
    assert set(tokens) <= set(meta["queries"])

    first = open_page(browser, page)
    assert (first["layer"], first["threshold"], first["query_step"]) == (5, 0.00075, step)
    note = browser.find_element("id", "note").text
    assert re.search(rf"every {step}(st|nd|rd|th) token row and column", note) and "exact" in note  # it says so

    k = next(k for k in range(len(tokens)) if isolated(keypoints, scores, k, 3))
    shown = click_crop(browser, *keypoints[k], model.image_size)
    assert (shown["query_keypoint"], shown["query_token"]) == (k, tokens[k])  # keypoint tokens exactly
    row = maps[5, tokens[k]]
    row = np.where(row >= 0.00075, row, 0)
    if row.max() > 0:  # random weights attend nearly uniformly: the shown argmax is a maximum at 8 bits
        assert row[shown["shown_map_argmax_token"]] >= row.max() * NEAR - 1e-12
        assert quantise(row)[0].argmax() == shown["shown_map_argmax_token"]

    # a location away from the keypoints: the nearest stored token on the sub-sampled grid
    far = next(
        (x, y)
        for y in range(10, 250, 7)
        for x in range(10, 186, 7)
        if np.hypot(*(keypoints - [x, y]).T).min() > 16 and (y // 4) % step and (x // 4) % step
    )
    shown = click_crop(browser, *far, model.image_size)
    r, c = divmod(shown["query_token"], 48)
    assert shown["query_keypoint"] is None and r % step == 0 and c % step == 0
    assert abs(r - far[1] // 4) <= step / 2 and abs(c - far[0] // 4) <= step / 2


def test_the_evaluation_writes_a_page_beside_each_figure(monkeypatch, tmp_path):
    from pipelines import evaluate

    card = ModelCard("transpose_r_tiny", (64, 48), COCO)
    torch.manual_seed(0)
    model = card.build().eval()
    batch = {"image": torch.randn(1, 3, 64, 48).clamp(-2, 2), "ids": torch.tensor([[0, 9]])}
    monkeypatch.setattr(evaluate, "batches", lambda s, card, batch_size=None: [batch])
    section = evaluate.EvaluateSection(
        runs={"r": "run"}, shards="shards", split="val", out_dir=str(tmp_path / "out"), metrics="m.json"
    )
    figures, pages = evaluate.explain_figures(model, section, card, tmp_path / "plots", tmp_path / "out", 1)
    assert [p.name for p in figures] == ["explain_0.png"] and figures[0].parent.name == "plots"
    assert [p.name for p in pages] == ["explain_0.html"] and pages[0].parent.name == "out"
    meta = page_meta(pages[0])
    assert meta["title"] == "transpose_r_tiny: attention areas, val sample 9" and meta["model"] == "transpose_r_tiny"
    # the page ran the model on the batch's own crop (normalisation undone, then redone)
    _, tokens, keypoints, _ = python_side(model, _unnormalised(batch["image"][0], model))
    assert meta["keypoint_tokens"] == tokens.tolist()
    np.testing.assert_allclose(meta["keypoints"], keypoints, atol=1e-3)


def _unnormalised(image: torch.Tensor, model) -> np.ndarray:
    mean, std = np.array(model.data_config.mean), np.array(model.data_config.std)
    return np.clip(image.permute(1, 2, 0).numpy() * std + mean, 0, 1)


def test_stored_queries_quantised_maps_and_errors_that_name_the_page(realdata, tmp_path):
    # every 2nd token row and column of a 4x3 grid (0, 2, 6, 8) and the keypoint token 5, exactly
    assert query_tokens((4, 3), 2, np.array([5, 0])).tolist() == [0, 2, 5, 6, 8]
    bytes_, top = quantise(np.array([[0.4, 0.1, 0.0], [0.0, 0.0, 0.0]]))
    assert bytes_.tolist() == [[255, 64, 0], [0, 0, 0]] and top.tolist() == pytest.approx([0.4, 0.0])
    model = create_model("transpose_r_tiny").eval()
    crop_rgb = photo_crop(realdata, model)
    page = tmp_path / "p.html"
    with pytest.raises(ValueError, match=r"p\.html: the crop is \(64, 48, 3\), the model takes \(128, 96, 3\)"):
        write_explanation_page(model, crop_rgb[::2, ::2], COCO, page)
    with pytest.raises(ValueError, match=r"p\.html: keypoint set 'mpii' has 16 keypoints, the model predicts 17"):
        write_explanation_page(model, crop_rgb, MPII, page)
    with pytest.raises(ValueError, match=r"p\.html: 3 layers of 16x12 tokens need .* raise max_bytes"):
        write_explanation_page(model, crop_rgb, COCO, page, max_bytes=100_000)
    assert not page.exists()
    small = write_explanation_page(model, crop_rgb, COCO, page, max_bytes=300_000)  # 192 tokens: sub-sampled
    assert small.stat().st_size <= 300_000 and page_meta(small)["query_step"] == 2
