"""DVC stage `make_synthetic`: the embedded default dataset, in the official COCO and MPII layouts.

    python -m pipelines.make_synthetic     # reads params.yaml `data.source` and `synthetic:`; writes data/synthetic/

With data.source = "real" it writes only a note (the shard stage then reads `data.datasets`). Besides the
images and annotations it writes data/synthetic/sources.json: where each dataset is, for the shard stage.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, fields

from dataops.synthetic import SyntheticConfig, dataset_sources, generate
from mlops.tracking import stage_run
from pipelines.data import SOURCES_FILE, SYNTHETIC, DataSection
from pipelines.params import load_params, parse_section, stage_arguments

OUT = SYNTHETIC
SCENE_EXCLUDED = ("seed", "coco_train", "coco_val", "mpii_train", "mpii_valid", "image_size")


@dataclass(frozen=True)
class SyntheticSection:
    seed: int = 22
    coco_train_images: int = 1200
    coco_val_images: int = 120
    mpii_train_images: int = 600
    mpii_valid_images: int = 60
    image_width: int = 640
    image_height: int = 480
    workers: int = 2
    scene: dict = field(default_factory=dict)  # any SyntheticConfig field: how hard the pictures are

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers: must be at least 1, got {self.workers}")

    def config(self) -> SyntheticConfig:
        """The generator's config: the counts and sizes here, the scene's fields (type-checked) over its defaults."""
        scene = {k: list(v.items()) if isinstance(v, dict) else v for k, v in self.scene.items()}
        overrides = parse_section(SyntheticConfig, scene, "synthetic.scene", exclude=SCENE_EXCLUDED)
        values = {f.name: getattr(overrides, f.name) for f in fields(SyntheticConfig) if f.name in self.scene}
        try:
            return SyntheticConfig(
                seed=self.seed,
                coco_train=self.coco_train_images,
                coco_val=self.coco_val_images,
                mpii_train=self.mpii_train_images,
                mpii_valid=self.mpii_valid_images,
                image_size=(self.image_width, self.image_height),
                **values,
            )
        except ValueError as err:
            raise SystemExit(f"params.yaml: synthetic: {err}") from None


def main() -> None:
    args = stage_arguments(__doc__).parse_args()
    params = load_params(args.params)
    data = parse_section(DataSection, params.get("data"), "data")
    section = parse_section(SyntheticSection, params.get("synthetic"), "synthetic")
    config = section.config() if data.source == "synthetic" else None
    tracked = {"data": params.get("data"), "synthetic": params.get("synthetic")}
    with stage_run("make_synthetic", tracked, enabled=not args.no_mlflow) as tracker:
        shutil.rmtree(OUT, ignore_errors=True)
        OUT.mkdir(parents=True)
        if config is None:
            (OUT / "SKIPPED.txt").write_text("data.source is 'real': no synthetic data made\n")
            print("data.source is 'real': make_synthetic skipped")
            return
        summary = generate(config, OUT, workers=section.workers)
        (OUT / SOURCES_FILE).write_text(json.dumps(dataset_sources(config), indent=1) + "\n")
        if tracker is not None:
            tracker.log_metrics(_counts(summary), step=0)
            tracker.log_artifact(OUT / "synthetic_summary.json")


def _counts(summary: dict) -> dict[str, float]:
    """Images and people per split, as metrics of the stage's MLflow run."""
    out = {}
    for split, stats in summary["splits"].items():
        for key in ("images", "instances", "instances_with_keypoints", "entries"):
            if isinstance(stats.get(key), (int, float)):
                out[f"{split}/{key}"] = float(stats[key])
    return out


if __name__ == "__main__":
    main()
