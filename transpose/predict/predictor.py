"""Top-down prediction over a list of images: poses, drawings, explanations and the COCO results file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transpose.evaluation.coco import coco_result
from transpose.keypoints import KeypointSet
from transpose.predict.batching import iter_predictions
from transpose.predict.drawing import draw_people, explain_person, write_image
from transpose.predict.inputs import PERSON_CATEGORY, ImageInput, PredictInputError
from transpose.predict.people import Person, keep_people


@dataclass(frozen=True)
class PredictOptions:
    batch_size: int = 32  # person crops per forward pass, across images
    flip: bool = True  # flip test
    draw_threshold: float = 0.2  # keypoints with a lower heatmap maximum are not drawn
    explain: bool = False  # attention dependency-area figure per person
    min_person_score: float = 0.2  # people with a lower rescored score are not drawn or explained (results keep them)

    def __post_init__(self):
        if self.batch_size < 1:
            raise PredictInputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.min_person_score <= 1.0:
            raise PredictInputError(f"--min-person-score must be within [0, 1], got {self.min_person_score}")


@dataclass
class PredictReport:
    results: list[dict] = field(default_factory=list)  # COCO keypoint results
    people: list[Person] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)  # {id, file_name, width, height, people}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    written: list[Path] = field(default_factory=list)
    hidden: int = 0  # people kept in results.json but below the person-score threshold of the drawings
    min_person_score: float = 0.0


def predict_images(
    model, keypoint_set: KeypointSet, sources: list[ImageInput], out_dir: str | Path, options: PredictOptions
) -> PredictReport:
    """Predict every image, writing <stem>_pose.jpg (and explain figures) as images finish; returns the report.

    `keypoint_set` is the model's (from its card): its flip pairs, OKS sigmas (NMS) and skeleton. results.json
    is written by `write_results` once all images are done.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport(min_person_score=options.min_person_score)
    predictions = iter_predictions(model, keypoint_set, sources, options.batch_size, options.flip, report.skipped)
    for job, keypoints, maxvals in predictions:
        people = keep_people(job, keypoints, maxvals, keypoint_set)
        shown = [p for p in people if p.score >= options.min_person_score]
        report.hidden += len(people) - len(shown)
        stem = job.source.path.stem
        canvas = draw_people(job.image, shown, keypoint_set, options.draw_threshold)
        report.written.append(write_image(out_dir / f"{stem}_pose.jpg", canvas))
        if options.explain:
            for person in shown:
                path = out_dir / f"{stem}_person{person.index}_explain.png"
                report.written.append(explain_person(model, job.image, person, keypoint_set, path))
        report.people += people
        report.results += [
            coco_result(p.image_id, np.column_stack([p.keypoints, p.maxvals]), p.score, PERSON_CATEGORY) for p in people
        ]
        height, width = job.image.shape[:2]
        report.images.append(
            {"id": job.source.image_id, "file_name": job.source.path.name, "width": width, "height": height,
             "people": len(people)}
        )  # fmt: skip
    if not report.images:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in report.skipped[:10])
        raise PredictInputError(f"no image could be read ({len(report.skipped)} skipped: {reasons})")
    return report


def write_results(report: PredictReport, out_dir: str | Path) -> Path:
    """results.json (COCO keypoint results) and images.json (file -> image id) in out_dir."""
    out_dir = Path(out_dir)
    (out_dir / "images.json").write_text(json.dumps(report.images, indent=1) + "\n")
    path = out_dir / "results.json"
    path.write_text(json.dumps(report.results) + "\n")
    return path


def summary(report: PredictReport, results_path: Path, detector_boxes: bool) -> str:
    """What was read, predicted, written and skipped (with the reason of each skipped image)."""
    lines = [f"{len(report.images)} image(s), {len(report.people)} person(s) -> {results_path}"]
    drawn = len(report.people) - report.hidden
    lines.append(
        f"pose drawings: {results_path.parent}/<name>_pose.jpg, {drawn} person(s) scoring >= "
        f"{report.min_person_score:g}"
        + (f" ({report.hidden} below it not drawn; results.json keeps them)" if report.hidden else "")
    )
    empty = [i["file_name"] for i in report.images if not i["people"]]
    if empty and detector_boxes:
        lines.append(f"{len(empty)} image(s) had no person box in --boxes: {', '.join(empty[:10])}")
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} unreadable image(s):")
        lines += [f"  {name}: {reason}" for name, reason in report.skipped]
    return "\n".join(lines)
