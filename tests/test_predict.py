"""`transpose predict`: COCO results and drawings for real images, equal to the evaluation path, clear errors."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cli.main import main
from transpose import predict as P
from transpose.crops import read_image_rgb
from transpose.inference import predict_boxes
from transpose.keypoints import COCO as COCO_KEYPOINTS
from transpose.keypoints import MPII
from transpose.models import ModelCard, card_for_weights, create_model, load_model

CARD = ModelCard(model="transpose_r_tiny", image_size=(128, 96), keypoints=COCO_KEYPOINTS)
DETECTIONS = "test_coco_det_AP_H_56.json"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An (untrained) transpose_r_tiny best.pth with its model.json."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    torch.save(create_model(CARD.model, num_keypoints=17, image_size=CARD.image_size).state_dict(), run / "best.pth")
    CARD.write(run / "model.json")
    return run / "best.pth"


@pytest.fixture(scope="module")
def coco_dir(realdata) -> Path:
    return realdata / "coco"


def _images(coco_dir: Path) -> list[Path]:
    return sorted(coco_dir.glob("*.jpg"))


def _copy_images(coco_dir: Path, target: Path, count: int) -> Path:
    target.mkdir()
    for path in _images(coco_dir)[:count]:
        shutil.copy(path, target / path.name)
    return target


def test_predict_with_detections_is_coco_results(checkpoint, coco_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["--model", str(checkpoint), "--images", str(coco_dir), "--boxes", str(coco_dir / DETECTIONS)]
    assert main(["predict", *argv, "--out", str(out), "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    names = {int(p.stem): p for p in _images(coco_dir)}
    assert results and {r["image_id"] for r in results} <= set(names)
    for r in results:
        assert r["category_id"] == 1 and len(r["keypoints"]) == 51
        assert np.isfinite(r["keypoints"]).all() and np.isfinite(r["score"])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_dir / "test_coco.json"))
        evaluator = COCOeval(gt, gt.loadRes(results), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert len(evaluator.stats) == 10
    for path in names.values():
        drawing = cv2.imread(str(out / f"{path.stem}_pose.jpg"))
        assert drawing is not None and drawing.shape == cv2.imread(str(path)).shape


def test_predictions_equal_the_evaluation_path(checkpoint, coco_dir, tmp_path):
    """Batches spanning two images give the keypoints of `predict_boxes` (flip test + DARK), image by image."""
    model = load_model(checkpoint)
    files = P.list_images(_copy_images(coco_dir, tmp_path / "images", 2))
    detections = P.load_detections(coco_dir / DETECTIONS)
    sources = P.image_inputs(files, P.assign_image_ids(files), detections)
    report = P.predict_images(model, COCO_KEYPOINTS, sources, tmp_path / "out", P.PredictOptions(batch_size=16))
    assert {p.image_id for p in report.people} == {785, 40083}
    for source in sources:
        reference = predict_boxes(model, read_image_rgb(source.path), source.boxes, COCO_KEYPOINTS)
        people = [p for p in report.people if p.image_id == source.image_id]
        results = [r for r in report.results if r["image_id"] == source.image_id]
        for person, result in zip(people, results):
            j = int(np.flatnonzero((source.boxes == person.box).all(axis=1))[0])
            np.testing.assert_allclose(person.keypoints, reference.keypoints[j], atol=1e-4)
            np.testing.assert_allclose(person.maxvals, reference.scores[j], atol=1e-4)
            written = np.asarray(result["keypoints"]).reshape(-1, 3)
            np.testing.assert_allclose(written[:, :2], reference.keypoints[j], atol=1e-3)  # JSON keeps 3 decimals


def test_without_boxes_one_person_per_image(checkpoint, coco_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", "--model", str(checkpoint.parent), "--images", str(coco_dir), "--out", str(out)]) == 0
    assert "whole image" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["image_id"] for r in results) == sorted(int(p.stem) for p in _images(coco_dir))


def test_unreadable_image_is_skipped_and_reported(checkpoint, coco_dir, tmp_path, capsys):
    images = _copy_images(coco_dir, tmp_path / "images", 2)
    (images / "broken.jpg").write_bytes(b"\x00not a jpeg" * 50)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(checkpoint), "--images", str(images), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable image" in printed and "broken.jpg: cannot decode" in printed
    assert len(json.loads((out / "results.json").read_text())) == 2
    assert sorted(p.name for p in out.glob("*_pose.jpg")) == [f"{p.stem}_pose.jpg" for p in _images(coco_dir)[:2]]


def test_explain_writes_a_figure_per_person(checkpoint, coco_dir, tmp_path):
    image = _images(coco_dir)[0]
    out = tmp_path / "out"
    assert main(["predict", "--model", str(checkpoint), "--images", str(image), "--out", str(out), "--explain"]) == 0
    figure = out / f"{image.stem}_person1_explain.png"
    assert figure.is_file() and cv2.imread(str(figure)) is not None


def test_arch_for_a_checkpoint_without_model_card(checkpoint, coco_dir, tmp_path):
    bare = tmp_path / "bare.pth"
    shutil.copy(checkpoint, bare)
    with pytest.raises(SystemExit, match="model.json"):
        main(["predict", "--model", str(bare), "--images", str(_images(coco_dir)[0]), "--out", str(tmp_path / "o")])
    card = card_for_weights(bare, "transpose_r_tiny", COCO_KEYPOINTS)
    assert (card.num_keypoints, tuple(card.image_size)) == (17, (128, 96))
    with pytest.raises(ValueError, match="predicts 17 heatmaps but the keypoint set 'mpii' has 16"):
        card_for_weights(bare, "transpose_r_tiny", MPII)
    image, out = _images(coco_dir)[0], tmp_path / "out"
    argv = ["--model", str(bare), "--arch", "transpose_r_tiny", "--keypoints", "coco", "--image-size", "128", "96"]
    assert main(["predict", *argv, "--images", str(image), "--out", str(out)]) == 0
    assert len(json.loads((out / "results.json").read_text())) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "missing/best.pth"}, r"--model missing/best\.pth does not exist"),
        ({"--images": "no/such/dir"}, r"--images no/such/dir does not exist"),
        ({"--images": "EMPTY"}, r"holds no \.jpg"),
        ({"--boxes": "NOT_A_LIST"}, r"not_a_list\.json: top level is a dict"),
        ({"--model": "models:/pose@champion"}, r"registry URIs need the pipeline extras"),
    ],
)
def test_clear_errors(checkpoint, coco_dir, tmp_path, monkeypatch, change, message):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "not_a_list.json").write_text('{"annotations": []}')
    monkeypatch.setitem(sys.modules, "mlops.registry", None)  # as without mlflow: the import fails
    args = {"--model": str(checkpoint), "--images": str(_images(coco_dir)[0]), "--out": str(tmp_path / "out")}
    for key, value in change.items():
        lookup = {"EMPTY": tmp_path / "EMPTY", "NOT_A_LIST": tmp_path / "not_a_list.json"}
        args[key] = str(lookup.get(value, value))
    with pytest.raises(SystemExit, match=message):
        main(["predict", *[item for pair in args.items() for item in pair]])
