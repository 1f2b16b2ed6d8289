"""DVC stages `evaluate_coco` / `evaluate_mpii`: score trained checkpoints on the validation shards with flip test
and DARK decoding, as the reference does; write DVC metrics, predictions, explanation figures and curves.

    python -m pipelines.evaluate --stage evaluate_coco
    python -m pipelines.evaluate --stage evaluate_mpii

Section keys: model, image_size, dataset (coco|mpii), shards, split, annotations, runs (name -> out_dir with
best.pth and history.json), metrics (the DVC metrics file), out_dir, explain_samples. COCO runs also get
NAME_keypoint_errors.json/.png: per-joint hit rates, mirrored people and OKS by size (where AP is lost).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from dataops.augment import AugmentConfig
from dataops.loaders import LoaderConfig
from dataops.loaders.dali_loader import DaliLoader
from transpose.engine.validation import coco_scorer, mpii_scorer, predict
from transpose.evaluation import load_coco_ground_truth, load_mpii_ground_truth
from transpose.evaluation.breakdown import format_breakdown, keypoint_breakdown, plot_breakdown
from transpose.figures import pyplot, save_figure
from transpose.keypoints import COCO, MPII
from transpose.models import create_model, load_reference_checkpoint


def evaluate_checkpoint(p: dict, checkpoint: Path) -> tuple[dict, list, torch.nn.Module]:
    kset = COCO if p["dataset"] == "coco" else MPII
    model = create_model(
        p["model"], num_keypoints=kset.num_keypoints, image_size=tuple(p["image_size"]), **p.get("model_args", {})
    )
    load_reference_checkpoint(model, checkpoint)
    model.eval()
    config = LoaderConfig(
        input_size=tuple(p["image_size"]), batch_size=32, augment=AugmentConfig(enabled=False), keypoint_set=kset,
        shuffle=False, workers=2,
    )  # fmt: skip
    batches = DaliLoader(Path(p["shards"]), p["split"], config)
    preds = predict(model, batches, kset, tuple(p["image_size"]), flip=True)
    if p["dataset"] == "coco":
        metrics, results = coco_scorer(load_coco_ground_truth(p["annotations"]))(preds)
    else:
        metrics, results = mpii_scorer(load_mpii_ground_truth(p["annotations"]))(preds)
    return metrics, results, model


def explain_figures(model, p: dict, out_dir: Path, count: int) -> list[Path]:
    """The paper's Fig. 6-style dependency areas for the first `count` validation crops."""
    from transpose.explain import explain_crop, plot_attention_areas

    kset = COCO if p["dataset"] == "coco" else MPII
    h, w = p["image_size"]
    config = LoaderConfig(
        input_size=(h, w), batch_size=count, augment=AugmentConfig(enabled=False), shuffle=False, workers=1
    )
    batch = next(iter(DaliLoader(Path(p["shards"]), p["split"], config)))
    paths = []
    for i in range(count):
        areas, coords, scores = explain_crop(model, batch["image"][i])
        crop = batch["image"][i].permute(1, 2, 0).numpy() * np.array(config.std) + np.array(config.mean)
        ratio = (w - 1) / (w // 4 - 1)
        coords_crop = (coords - [(w // 4 - 1) / 2, (h // 4 - 1) / 2]) * ratio + [(w - 1) / 2, (h - 1) / 2]
        paths.append(
            plot_attention_areas(
                np.clip(crop, 0, 1),
                coords_crop,
                areas,
                kset,
                out_dir / f"explain_{i}.png",
                scores=scores,
                title=f"{p['model']}: dependency areas per layer, val sample {int(batch['ids'][i, 1])}",
            )
        )
    return paths


def curves_figure(histories: dict[str, list[dict]], gate: str, out: Path) -> Path:
    plt = pyplot()

    fig, (ax_loss, ax_gate) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, history in histories.items():
        epochs = [r["epoch"] for r in history]
        ax_loss.plot(epochs, [r["train/loss_epoch"] for r in history], label=name)
        scored = [(r["epoch"], r[f"val/{gate}"]) for r in history if f"val/{gate}" in r]
        if scored:
            ax_gate.plot(*zip(*scored), marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    ax_gate.set(xlabel="epoch", ylabel=gate, title=f"validation {gate} (GT boxes, flip + DARK)")
    for ax in (ax_loss, ax_gate):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, out)


def keypoint_errors(p: dict, name: str, results: list[dict], out_dir: Path) -> Path:
    """Where the run's OKS is lost (per joint, mirrored people, by size): NAME_keypoint_errors.json and .png."""
    breakdown = keypoint_breakdown(load_coco_ground_truth(p["annotations"]), results)
    (out_dir / f"{name}_keypoint_errors.json").write_text(json.dumps(breakdown, indent=1) + "\n")
    print(f"{name} on {p['split']}: " + format_breakdown(breakdown))
    title = f"{name} ({p['model']}) on {p['split']}: where the OKS is lost"
    return plot_breakdown(breakdown, out_dir / f"{name}_keypoint_errors.png", title=title)


def run(stage: str, params_file: Path = Path("params.yaml")) -> dict:
    params = yaml.safe_load(params_file.read_text())
    if stage not in params:
        raise SystemExit(f"{params_file}: no section '{stage}'")
    p = params[stage]
    out_dir = Path(p["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    gate = "AP" if p["dataset"] == "coco" else "PCKh"
    report, histories, figures = {}, {}, []
    for name, run_dir in p["runs"].items():
        run_dir = Path(run_dir)
        metrics, results, model = evaluate_checkpoint(p, run_dir / "best.pth")
        report[name] = metrics
        (out_dir / f"{name}_predictions.json").write_text(json.dumps(results))
        if p["dataset"] == "coco":
            figures.append(keypoint_errors(p, name, results, out_dir))
        if (run_dir / "history.json").is_file():
            histories[name] = json.loads((run_dir / "history.json").read_text())
        print(f"{stage} {name}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if histories:
        figures.append(curves_figure(histories, gate, out_dir / "training_curves.png"))
    figures += explain_figures(model, p, out_dir, int(p.get("explain_samples", 2)))
    Path(p["metrics"]).parent.mkdir(parents=True, exist_ok=True)
    Path(p["metrics"]).write_text(json.dumps(report, indent=2) + "\n")
    return {"metrics": report, "figures": [str(f) for f in figures]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    print(json.dumps(run(args.stage, args.params), indent=1))


if __name__ == "__main__":
    main()
