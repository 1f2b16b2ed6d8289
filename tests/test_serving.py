"""Serving the registered model: a real `mlflow models serve` on 127.0.0.1 answers base64 photos with the
keypoints `transpose predict` finds, and bad requests with a 4xx that says what is wrong."""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from cli.main import main as cli
from tests.test_tracking_outage import free_port
from tests.tiny_model import train_tiny
from tests.training_runs import kill_tree
from transpose import predict as P
from transpose.hashing import file_sha256
from transpose.keypoints import COCO
from transpose.models import load_trained

mlflow = pytest.importorskip("mlflow")

from mlops import registry  # noqa: E402
from mlops.serving.packaging import log_serving_model, serving_requirements, torch_requirement  # noqa: E402
from mlops.serving.requests import RequestError, parse_row  # noqa: E402

PHOTO = "000000000785.jpg"
NAME = "transpose-serve-test"


class ModelServer:
    """`mlflow models serve --env-manager local` of a registered alias on a free 127.0.0.1 port."""

    def __init__(self, uri: str, env: dict, log: Path):
        self.port = free_port()
        argv = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local"]
        argv += ["-h", "127.0.0.1", "-p", str(self.port), "-t", "30"]
        self.log = log
        self.process = subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited: {self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"no answer on {self.url}/ping: {self.log.read_text()[-3000:]}")

    def post(self, body, timeout: float = 60) -> requests.Response:
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return requests.post(
            f"{self.url}/invocations", data=data, headers={"Content-Type": "application/json"}, timeout=timeout
        )

    def stop(self) -> None:
        kill_tree(self.process.pid)


@pytest.fixture(scope="module")
def served(realdata, tmp_path_factory):
    """A tiny trained model logged as the serving model, registered, made champion and served."""
    root = tmp_path_factory.mktemp("serving")
    run_dir = train_tiny(realdata / "coco", root / "run")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv(registry.LOCK_ENV, raising=False)
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.create_experiment("serving", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifact(str(run_dir / "best.pth"))
            mlflow.log_artifact(str(run_dir / "model.json"))
            info = log_serving_model(run_dir)
        ann = root / "ann.json"
        ann.write_text("{}")
        (root / "shards").mkdir()
        (root / "shards" / "val-manifest.json").write_text("{}")
        data = registry.EvalData.from_files("coco", "val", ann, root / "shards")
        version = registry.register(NAME, info.model_uri, run.info.run_id, {"AP": 0.1}, "AP", data)
        registry.promote(NAME, version.version)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # as in an activated venv
        server = ModelServer(f"models:/{NAME}@champion", env, root / "serve.log")
        try:
            server.wait()
            yield server, run_dir, version
        finally:
            server.stop()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _photo_boxes(coco_dir: Path) -> tuple[list[list[float]], list[float]]:
    detections = json.loads((coco_dir / "test_coco_det_AP_H_56.json").read_text())
    mine = [d for d in detections if d["image_id"] == int(Path(PHOTO).stem)]
    return [d["bbox"] for d in mine], [d["score"] for d in mine]


def test_a_served_photo_gets_the_keypoints_of_transpose_predict(served, realdata, tmp_path):
    server, run_dir, _ = served
    coco = realdata / "coco"
    boxes, scores = _photo_boxes(coco)
    answer = server.post(
        {"dataframe_records": [{"image": _b64((coco / PHOTO).read_bytes()), "boxes": boxes, "box_scores": scores}]}
    )
    assert answer.status_code == 200, answer.text[:2000]
    (served_image,) = answer.json()["predictions"]
    assert served_image["keypoint_names"] == list(COCO.names)
    assert (served_image["width"], served_image["height"]) == (640, 425)

    single = tmp_path / "images"
    single.mkdir()
    (single / PHOTO).write_bytes((coco / PHOTO).read_bytes())
    argv = ["predict", "--model", str(run_dir), "--images", str(single), "--out", str(tmp_path / "out")]
    assert cli([*argv, "--boxes", str(coco / "test_coco_det_AP_H_56.json"), "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())  # written to 3 decimals
    people = served_image["people"]
    assert len(people) == len(results) > 1
    for person, result in zip(people, results):
        np.testing.assert_allclose(np.ravel(person["keypoints"]), result["keypoints"], atol=5.001e-4, rtol=0)
        assert person["score"] == pytest.approx(result["score"], abs=5.001e-4)
        assert any(np.allclose(person["box"], b) for b in boxes)
    # and at full precision, the library behind `transpose predict`
    model, card = load_trained(run_dir)
    sources = P.image_inputs([single / PHOTO], [785], P.load_detections(coco / "test_coco_det_AP_H_56.json"))
    with torch.inference_mode():
        report = P.predict_images(model, card.keypoints, sources, tmp_path / "lib", P.PredictOptions())
    assert len(report.people) == len(people)
    for person, expected in zip(people, report.people):
        keypoints = np.column_stack([expected.keypoints, expected.maxvals])
        np.testing.assert_allclose(person["keypoints"], keypoints, atol=1e-4, rtol=0)
        assert person["score"] == pytest.approx(expected.score, abs=1e-4)

    body = {
        "dataframe_records": [{"image": _b64((coco / PHOTO).read_bytes()), "boxes": boxes}],
        "params": {"flip": False},
    }
    unflipped = server.post(body)
    assert unflipped.status_code == 200, unflipped.text[:2000]
    no_flip = unflipped.json()["predictions"][0]["people"][0]["keypoints"]
    assert np.abs(np.subtract(no_flip, people[0]["keypoints"])).max() > 1e-3  # the param reaches the model

    # integer boxes and no scores are fine; no boxes means the whole image is one person, as predict
    whole = server.post(
        {
            "inputs": [
                {"image": _b64((coco / PHOTO).read_bytes())},
                {"image": _b64((coco / PHOTO).read_bytes()), "boxes": [[280, 44, 218, 346]]},
            ]
        }
    )
    assert whole.status_code == 200, whole.text[:2000]
    first, second = whole.json()["predictions"]
    assert len(first["people"]) == 1 and first["people"][0]["box"] == [0.0, 0.0, 640.0, 425.0]
    assert len(second["people"]) == 1 and second["people"][0]["box_score"] == 1.0


def _png_header(width: int, height: int) -> bytes:
    """The first chunk of a PNG claiming width x height pixels (enough for the size check)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"image": _b64(b"this is not an image at all")}, "not a JPEG or PNG"),
        ({"image": "%%% not base64 %%%"}, "not base64"),
        ({"image": "TRUNCATED"}, "truncated JPEG"),
        ({"image": "PHOTO", "boxes": [[700, 10, 50, 50]]}, "lies outside the 640x425 image"),
        ({"image": "PHOTO", "boxes": [[10, 10, 0, 50]]}, "w, h > 0"),
        ({"image": "PHOTO", "boxes": [[10, 10, 50]]}, r"list of \[x, y, w, h\]"),
        ({"image": "PHOTO", "boxes": [[10, 10, 50, 50]], "box_scores": [0.5, 0.5]}, "1 finite numbers"),
        ({"image": _b64(_png_header(20000, 20000))}, "400.0 megapixels, over the limit"),
        ({"imag": "PHOTO"}, "missing inputs"),
    ],
    ids=["not-an-image", "not-base64", "truncated", "box-outside", "empty-box", "short-box", "scores", "huge", "field"],
)
def test_bad_requests_get_a_4xx_saying_what_is_wrong(served, realdata, row, message):
    server = served[0]
    photo = (realdata / "coco" / PHOTO).read_bytes()
    stand_ins = {"PHOTO": _b64(photo), "TRUNCATED": _b64(photo[:20_000])}
    row = {k: stand_ins.get(v, v) if isinstance(v, str) else v for k, v in row.items()}
    answer = server.post({"dataframe_records": [row]})
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:1000])
    assert re.search(message, answer.json()["message"]), answer.json()["message"][:1000]


def test_malformed_json_is_a_4xx_and_the_server_keeps_serving(served, realdata):
    server = served[0]
    assert 400 <= server.post("{not json").status_code < 500
    assert 400 <= server.post({"inputs": []}).status_code < 500
    ok = server.post({"inputs": [{"image": _b64((realdata / "coco" / PHOTO).read_bytes())}]})
    assert ok.status_code == 200


def test_the_version_is_also_a_real_transpose_module_at_any_input_size(served):
    version = served[2]
    module = mlflow.pytorch.load_model(f"models:/{NAME}@champion")
    assert type(module).__name__ == "TransPoseR" and hasattr(module, "global_encoder")
    module.eval()
    with torch.no_grad():
        assert module(torch.zeros(3, 3, 128, 96)).shape == (3, 17, 32, 24)
        assert module(torch.zeros(1, 3, 160, 128)).shape == (1, 17, 40, 32)
    assert version.card["model"] == "transpose_r_tiny"  # the card travels with the version


def test_the_logged_requirements_install_the_torch_build_that_trained_it():
    assert torch_requirement("2.13.0+cpu") == [
        "--extra-index-url https://download.pytorch.org/whl/cpu",
        "torch==2.13.0+cpu",
    ]
    assert torch_requirement("2.9.1+cu130")[0].endswith("/whl/cu130")
    assert torch_requirement("2.9.1") == ["torch==2.9.1"]
    lines = serving_requirements()
    assert not any(line.startswith("transpose") for line in lines)  # the code travels with the model instead
    assert {"numpy", "opencv-python-headless", "mlflow"} <= {line.split("==")[0] for line in lines}


def test_request_rows_are_checked_before_decoding(realdata):
    photo = (realdata / "coco" / PHOTO).read_bytes()
    row = parse_row(0, {"image": "data:image/jpeg;base64," + _b64(photo), "boxes": np.array([[1, 2, 30, 40]])})
    assert row.image.shape == (425, 640, 3) and row.box_scores.tolist() == [1.0]
    with pytest.raises(RequestError, match="row 3: 'box_scores' without 'boxes'"):
        parse_row(3, {"image": _b64(photo), "box_scores": [1.0]})
    with pytest.raises(RequestError, match="over the limit of 0.1"):
        parse_row(0, {"image": _b64(photo)}, max_pixels=100_000)


def test_the_promote_stage_attaches_a_verified_onnx_file_and_a_description(served, tmp_path):
    pytest.importorskip("onnxruntime")
    from pipelines.promote import attach_onnx

    _, run_dir, version = served
    report = attach_onnx(version, run_dir, tmp_path / f"{NAME}.onnx")
    assert report["worst_relative_diff"] <= 1e-4
    mv = mlflow.MlflowClient().get_model_version(NAME, version.version)
    assert mv.tags["onnx.uri"] == f"runs:/{version.run_id}/onnx/{NAME}.onnx" == report["uri"]
    fetched = Path(mlflow.artifacts.download_artifacts(mv.tags["onnx.uri"], dst_path=str(tmp_path / "fetched")))
    assert fetched.read_bytes() == (tmp_path / f"{NAME}.onnx").read_bytes()
    assert mv.tags["onnx.sha256"] == file_sha256(fetched)
    assert mv.description.startswith("transpose_r_tiny at 128x96, 17 keypoints (coco)")
    assert "gate AP; on coco val" in mv.description and "AP=0.1000" in mv.description
