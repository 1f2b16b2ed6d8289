"""DVC stages `evaluate_coco` / `evaluate_mpii`: score trained runs on a shard split, with flip test and DARK
decoding as the reference; write DVC metrics, an evaluation record per run, predictions and figures.

    python -m pipelines.evaluate --stage evaluate_coco
    python -m pipelines.evaluate --stage evaluate_mpii

Section keys: runs (name -> a training run's out_dir: its best.pth and model.json), shards, split, out_dir,
metrics (the DVC metrics file: each run's headline metrics), figures (a folder: the DVC image plots),
explain_samples, batch_size, loader. Each run's model card gives its architecture, input size and keypoint set,
and the split's manifest its dataset kind and ground truth; a run whose keypoints are not the split's is
refused. Written per run in out_dir, and as figures:

    out_dir/NAME_evaluation.json          the record the promote stage registers: metrics, the data, its fingerprint
    out_dir/NAME_predictions.json         COCO results (coco) or per-person joints (mpii)
    out_dir/NAME_keypoint_errors.json     coco: per-joint hit rates, mirrored people, OKS by size
    figures/NAME_keypoint_errors.png      the same as a figure
    figures/training_curves.png           loss and validation curves of every run
    figures/explain_K.png                 dependency areas of the first validation crops (the last run's model)
    out_dir/explain_K.html                the same crops as pages for a browser: click a keypoint or a location,
                                          pick the layer, dependency or affected areas, delta (MLflow: explanations)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dataops.augment import AugmentConfig
from dataops.loaders import LoaderConfig, make_loader
from dataops.shards import ManifestError, ShardManifest, read_manifest, verify_shards
from mlops.fingerprints import evaluation_fingerprint
from mlops.tracking import stage_run
from pipelines.params import ParamsError, load_params, parse_section, stage_arguments
from transpose.engine.curves import plot_training_curves
from transpose.engine.validation import predict
from transpose.evaluation import load_coco_ground_truth
from transpose.evaluation.breakdown import format_breakdown, keypoint_breakdown, plot_breakdown
from transpose.evaluation.protocols import DatasetKind, dataset_kind
from transpose.models import ModelCard, load_trained, read_card

EVALUATION_SUFFIX = "_evaluation.json"


@dataclass(frozen=True)
class EvaluateSection:
    runs: dict[str, str]  # name -> a training run's out_dir
    shards: str
    split: str
    out_dir: str
    metrics: str  # DVC metrics: {run: headline metrics}
    figures: str | None = None  # DVC image plots (default: out_dir)
    explain_samples: int = 2
    batch_size: int = 32
    workers: int = 2
    loader: Literal["dali", "torch"] = "dali"

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("runs: name at least one run, e.g. {pretrain: outputs/pretrain}")
        for key, low in (("explain_samples", 0), ("batch_size", 1), ("workers", 0)):
            if getattr(self, key) < low:
                raise ValueError(f"{key}: must be at least {low}, got {getattr(self, key)}")


def check_run(card: ModelCard, data: ShardManifest, where: str) -> None:
    """A run can be scored on a split only with the split's keypoints, at a crop aspect the shards were cut for."""
    if card.keypoints.names != data.keypoints.names:
        raise ParamsError(
            f"{where}: the run predicts the keypoints of {card.keypoints.name!r} ({card.num_keypoints}) but "
            f"{data.path} holds {data.keypoints.name!r} ({data.keypoints.num_keypoints}): evaluate it on its own data"
        )
    try:
        data.check_aspect_ratio(tuple(card.image_size), f"{where} (its model card)")
    except ManifestError as err:
        raise ParamsError(str(err)) from None


def batches(s: EvaluateSection, card: ModelCard, batch_size: int | None = None):
    config = LoaderConfig(
        input_size=tuple(card.image_size),
        batch_size=batch_size or s.batch_size,
        augment=AugmentConfig(enabled=False),
        shuffle=False,
        workers=s.workers,
    )
    return make_loader(s.shards, s.split, config, kind=s.loader)


def evaluate_run(s: EvaluateSection, data: ShardManifest, run: str | Path) -> tuple[dict, list, torch.nn.Module]:
    """(metrics, results, model) of one trained run on the section's split."""
    model, card = load_trained(run)
    kind = dataset_kind(data.dataset_kind)
    scorer = kind.scorer(data.ground_truth, data.keypoints)
    preds = predict(model, batches(s, card), card.keypoints, model.data_config.codec(), flip=True)
    metrics, results = scorer(preds)
    return metrics, results, model


def evaluation_record(s: EvaluateSection, data: ShardManifest, name: str, metrics: dict) -> dict:
    """What the promote stage registers: the run, its metrics and the data they were computed on."""
    kind = dataset_kind(data.dataset_kind)
    return {
        "run": s.runs[name],
        "dataset_kind": kind.name,
        "gate_metric": kind.gate_metric,
        "metrics": metrics,
        "data": {
            "shards": s.shards,
            "split": s.split,
            "ground_truth": str(data.ground_truth),
            "fingerprint": evaluation_fingerprint(data.ground_truth, s.shards, s.split),
        },
    }


def explain_figures(
    model, s: EvaluateSection, card: ModelCard, figures_dir: Path, pages_dir: Path, count: int
) -> tuple[list[Path], list[Path]]:
    """The paper's Fig. 6-style dependency areas of the first `count` validation crops (explain_K.png, a DVC
    plot) and the same crops as self-contained HTML pages (explain_K.html in `pages_dir`: DVC plots take no
    HTML, so the pages go to the stage's out_dir)."""
    from transpose.explain import explain_crop, plot_attention_areas
    from transpose.explain_page import write_explanation_page

    if count == 0:
        return [], []
    batch = next(iter(batches(s, card, batch_size=count)))
    mean, std = np.array(model.data_config.mean), np.array(model.data_config.std)
    figures, pages = [], []
    for i in range(count):
        areas, keypoints, scores = explain_crop(model, batch["image"][i])
        crop = np.clip(batch["image"][i].permute(1, 2, 0).numpy() * std + mean, 0, 1)
        sample = f"{s.split} sample {int(batch['ids'][i, 1])}"
        title = f"{card.model}: dependency areas per layer, {sample}"
        out = figures_dir / f"explain_{i}.png"
        figures.append(plot_attention_areas(crop, keypoints, areas, card.keypoints, out, scores=scores, title=title))
        title = f"{card.model}: attention areas, {sample}"
        page = pages_dir / f"explain_{i}.html"
        pages.append(write_explanation_page(model, crop, card.keypoints, page, title=title, model_name=card.model))
    return figures, pages


def keypoint_errors(data: ShardManifest, name: str, results: list[dict], out_dir: Path, figures: Path, title: str):
    """Where the run's OKS is lost (per joint, mirrored people, by size): NAME_keypoint_errors.json and .png."""
    breakdown = keypoint_breakdown(load_coco_ground_truth(data.ground_truth, keypoint_set=data.keypoints), results)
    (out_dir / f"{name}_keypoint_errors.json").write_text(json.dumps(breakdown, indent=1) + "\n")
    print(f"{name} on {data.split}: " + format_breakdown(breakdown))
    return plot_breakdown(breakdown, figures / f"{name}_keypoint_errors.png", title=title)


def check(s: EvaluateSection, stage: str) -> tuple[ShardManifest, dict[str, ModelCard]]:
    """The split's manifest and every run's card, checked against each other before anything is scored."""
    try:
        data = read_manifest(s.shards, s.split)
    except ManifestError as err:
        raise ParamsError(f"{stage}.shards: {err}") from None
    if data.ground_truth is None or not data.ground_truth.is_file():
        raise ParamsError(f"{stage}.split: {data.path} names no ground truth file beside it: re-shard")
    verify_shards(s.shards, s.split)  # a ShardError naming the file when the shards changed since written
    cards = {}
    for name, run in s.runs.items():
        try:
            cards[name] = read_card(run)
        except (OSError, ValueError) as err:
            raise ParamsError(f"params.yaml: '{stage}.runs.{name}': {err}") from None
        check_run(cards[name], data, f"params.yaml: {stage}.runs.{name} ({run})")
    return data, cards


def run(s: EvaluateSection, stage: str, tracker=None) -> dict:
    data, cards = check(s, stage)
    kind: DatasetKind = dataset_kind(data.dataset_kind)
    out_dir, figures_dir = Path(s.out_dir), Path(s.figures or s.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    report, histories, figures, model = {}, {}, [], None
    for name, run_dir in s.runs.items():
        metrics, results, model = evaluate_run(s, data, run_dir)
        report[name] = kind.headline(metrics)
        record = evaluation_record(s, data, name, metrics)
        (out_dir / f"{name}{EVALUATION_SUFFIX}").write_text(json.dumps(record, indent=1) + "\n")
        (out_dir / f"{name}_predictions.json").write_text(json.dumps(results))
        if kind.name == "coco":
            title = f"{name} ({cards[name].model}) on {s.split}: where the OKS is lost"
            figures.append(keypoint_errors(data, name, results, out_dir, figures_dir, title))
        history = Path(run_dir) / "history.json"
        if history.is_file():
            histories[name] = json.loads(history.read_text())
        print(f"{stage} {name}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if tracker is not None:
            tracker.log_metrics({f"{name}/{k}": v for k, v in metrics.items()}, step=0)
    if histories:
        title = f"{stage}: learning curves of {', '.join(histories)}"
        curves = figures_dir / "training_curves.png"
        figures.append(plot_training_curves(histories, kind.gate_metric, curves, title))
    last = list(s.runs)[-1]
    explained, pages = explain_figures(model, s, cards[last], figures_dir, out_dir, s.explain_samples)
    figures += explained
    Path(s.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(s.metrics).write_text(json.dumps(report, indent=2) + "\n")
    if tracker is not None:
        for figure in figures:
            tracker.log_artifact(figure, "figures")
        for page in pages:
            tracker.log_artifact(page, "explanations")
        for name in s.runs:
            tracker.log_artifact(out_dir / f"{name}{EVALUATION_SUFFIX}")
    return {"metrics": report, "figures": [str(f) for f in figures], "explanations": [str(p) for p in pages]}


def main() -> None:
    args = stage_arguments(__doc__, stage="evaluate_coco").parse_args()
    values = load_params(args.params).get(args.stage)
    section = parse_section(EvaluateSection, values, args.stage)
    check(section, args.stage)  # before the MLflow run opens
    with stage_run(args.stage, values, enabled=not args.no_mlflow) as tracker:
        print(json.dumps(run(section, args.stage, tracker), indent=1))


if __name__ == "__main__":
    main()
