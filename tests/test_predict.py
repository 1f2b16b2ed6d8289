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
def confident_checkpoint(tmp_path_factory) -> Path:
    """The untrained model with every heatmap lifted by 0.5: each keypoint clears the rescoring's 0.2, so a
    person's score follows its detector box score, as with a trained model."""
    run = tmp_path_factory.mktemp("confident")
    torch.manual_seed(0)
    state = create_model(CARD.model, num_keypoints=17, image_size=CARD.image_size).state_dict()
    state["final_layer.bias"] += 0.5
    torch.save(state, run / "best.pth")
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
    argv = ["predict", "--model", str(checkpoint), "--images", str(image), "--out", str(out), "--explain"]
    assert main([*argv, "--min-person-score", "0"]) == 0  # untrained: every person scores 0
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


def test_people_below_the_person_score_are_kept_in_results_but_not_drawn(
    confident_checkpoint, coco_dir, tmp_path, capsys
):
    image = _images(coco_dir)[0]
    argv = [
        "predict",
        "--model",
        str(confident_checkpoint),
        "--images",
        str(image),
        "--boxes",
        str(coco_dir / DETECTIONS),
    ]
    assert main([*argv, "--out", str(tmp_path / "all"), "--min-person-score", "0"]) == 0
    assert "not drawn" not in capsys.readouterr().out
    scores = sorted({r["score"] for r in json.loads((tmp_path / "all" / "results.json").read_text())})
    assert len(scores) > 3
    cut = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # between two results: rounding is moot
    assert main([*argv, "--out", str(tmp_path / "some"), "--min-person-score", f"{cut:.6f}"]) == 0
    below = sum(r["score"] < cut for r in json.loads((tmp_path / "all" / "results.json").read_text()))
    assert f"({below} below it not drawn; results.json keeps them)" in capsys.readouterr().out
    same = json.loads((tmp_path / "some" / "results.json").read_text())
    assert same == json.loads((tmp_path / "all" / "results.json").read_text())
    assert main([*argv, "--out", str(tmp_path / "none"), "--min-person-score", "1"]) == 0
    drawn = {k: cv2.imread(str(tmp_path / k / f"{image.stem}_pose.jpg")).astype(int) for k in ("all", "some", "none")}
    plain = cv2.imread(str(image)).astype(int)
    assert np.abs(drawn["none"] - plain).mean() < np.abs(drawn["some"] - plain).mean()  # JPEG noise only
    assert np.abs(drawn["some"] - plain).mean() < np.abs(drawn["all"] - plain).mean()  # fewer skeletons
    with pytest.raises(SystemExit, match=r"--min-person-score must be within \[0, 1\]"):
        main([*argv, "--out", str(tmp_path / "bad"), "--min-person-score", "2"])


def test_a_truncated_jpeg_is_skipped_and_named(checkpoint, coco_dir, tmp_path, capsys):
    images = _copy_images(coco_dir, tmp_path / "images", 1)
    whole = _images(coco_dir)[1].read_bytes()
    (images / "cut.jpg").write_bytes(whole[: len(whole) // 5])  # OpenCV alone would pose its grey remainder
    out = tmp_path / "out"
    assert main(["predict", "--model", str(checkpoint), "--images", str(images), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable image" in printed and "cut.jpg: cannot decode" in printed
    assert "truncated JPEG" in printed
    assert [i["file_name"] for i in json.loads((out / "images.json").read_text())] == [_images(coco_dir)[0].name]


def test_no_readable_image_is_a_failure_that_lists_why(checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (images / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(SystemExit, match=r"no image could be read \(2 skipped: a\.jpg: .*truncated JPEG.*b\.png: "):
        main(["predict", "--model", str(checkpoint), "--images", str(images), "--out", str(tmp_path / "out")])


def test_one_box_poses_that_person_as_the_library_does(checkpoint, coco_dir, tmp_path):
    image, box = _images(coco_dir)[0], [280.0, 44.0, 218.0, 346.0]
    out = tmp_path / "out"
    argv = ["predict", "--model", str(checkpoint), "--images", str(image), "--out", str(out)]
    assert main([*argv, "--box", ",".join(map(str, box)), "--device", "cpu"]) == 0
    (result,) = json.loads((out / "results.json").read_text())
    expected = predict_boxes(load_model(checkpoint), read_image_rgb(image), [box], COCO_KEYPOINTS)
    np.testing.assert_allclose(np.reshape(result["keypoints"], (-1, 3))[:, :2], expected.keypoints[0], atol=5e-4)
    for extra, message in [
        (["--box", "700,10,50,50"], r"--box 700,10,50,50 lies outside 000000000785\.jpg \(640x425\)"),
        (["--box", "1,2,3"], None),  # argparse: x,y,w,h numbers (exit 2)
        (["--box", "1,2,3,4", "--boxes", str(coco_dir / DETECTIONS)], "either --box .* or --boxes"),
    ]:
        with pytest.raises(SystemExit, match=message) as stopped:
            main([*argv, *extra])
        assert stopped.value.code != 0
    with pytest.raises(SystemExit, match=r"--box is for one image, but --images holds 4"):
        main(["predict", "--model", str(checkpoint), "--images", str(coco_dir), "--box", "1,2,3,4", "--out", str(out)])
