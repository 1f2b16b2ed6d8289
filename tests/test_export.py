"""ONNX export: the file reproduces PyTorch (checked by the export itself, and again here), carries the model card,
keeps the batch axis dynamic, optionally outputs the attention maps; an unfaithful export fails loudly; and the
torch-free runtime gives the keypoints of `transpose.inference.predict_boxes` on a real photo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from cli.main import main
from transpose.crops import person_crops, read_image_rgb
from transpose.export.onnx import ExportError, export_onnx
from transpose.export.onnx_runtime import OnnxPoseModel
from transpose.inference import predict_boxes
from transpose.keypoints import COCO
from transpose.models import ModelCard, create_model, load_trained

CARD = ModelCard(model="transpose_r_tiny", image_size=(128, 96), keypoints=COCO)
REPO = Path(__file__).resolve().parents[1]
PAPER_MODELS = ["transpose_r_a3", "transpose_r_a4", "transpose_h_s", "transpose_h_a4", "transpose_h_a6"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """An (untrained) transpose_r_tiny run: best.pth and its model.json."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    torch.save(CARD.build().state_dict(), run / "best.pth")
    CARD.write(run / "model.json")
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", "--model", str(run_dir), "--out", str(out), "--attention"]) == 0
    return out


def test_the_exported_file_carries_the_card_and_reproduces_pytorch_at_any_batch(exported, run_dir):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["transpose.card"])["model"] == "transpose_r_tiny"
    assert json.loads(meta["transpose.keypoints"]) == list(COCO.names)
    assert json.loads(meta["transpose.input_size"]) == [128, 96] and json.loads(meta["transpose.heatmap_stride"]) == 4
    model, _ = load_trained(run_dir)
    names = [o.name for o in session.get_outputs()]
    assert names[0] == "heatmaps" and len(names) == 1 + len(model(torch.zeros(1, 3, 128, 96), True)[1])
    for batch in (1, 5):  # neither is the batch it was traced at (2)
        image = torch.randn(batch, 3, 128, 96, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            heatmaps, attentions = model(image, return_attention=True)
        got = session.run(None, {"image": image.numpy()})
        assert np.abs(got[0] - heatmaps.numpy()).max() <= 1e-4 * np.abs(heatmaps.numpy()).max()
        for have, want in zip(got[1:], attentions):
            assert have.shape == tuple(want.shape) and np.allclose(have, want.numpy(), atol=1e-5)


def test_an_unfaithful_export_fails_loudly_and_keeps_no_good_looking_file(run_dir, tmp_path):
    model, card = load_trained(run_dir)
    with pytest.raises(ExportError, match="differs from PyTorch by .* more than the tolerance 0"):
        export_onnx(model, card, tmp_path / "model.onnx", tolerance=0.0)
    assert not (tmp_path / "model.onnx").exists() and (tmp_path / "model.onnx.unverified").exists()


def test_the_torch_free_runtime_gives_the_keypoints_of_predict_boxes(exported, run_dir, realdata, tmp_path):
    image_path = realdata / "coco" / "000000000785.jpg"
    boxes = [[280.79, 44.73, 218.7, 346.68], [200.0, 60.0, 150.0, 300.0]]
    model, card = load_trained(run_dir)
    reference = predict_boxes(model, read_image_rgb(image_path), boxes, card.keypoints)
    onnx = OnnxPoseModel(exported)
    keypoints, scores = onnx.predict(read_image_rgb(image_path), boxes)
    # the same crops, normalisation and flip test: the heatmaps agree to float32 rounding
    _, _, crops = person_crops(read_image_rgb(image_path), boxes, card.image_size)
    heatmaps = onnx.heatmaps(crops)
    assert np.abs(heatmaps - reference.heatmaps).max() <= 1e-4 * np.abs(reference.heatmaps).max()
    assert np.allclose(scores, reference.scores, rtol=1e-4, atol=1e-6)
    # and the model's own codec decodes them (an untrained model's maps make DARK's Newton step ill-conditioned,
    # so rounding-level differences of the maps can move its keypoints anywhere: compare the decoding itself)
    decoded, _ = model.data_config.codec().decode(heatmaps, reference.centers, reference.scales)
    assert np.array_equal(keypoints, decoded)
    script = f"""
import sys, json
sys.modules["torch"] = None  # any import of torch fails
from transpose.crops import person_crops, read_image_rgb
from transpose.export.onnx_runtime import OnnxPoseModel
keypoints, scores = OnnxPoseModel({str(exported)!r}).predict(read_image_rgb({str(image_path)!r}), {boxes!r})
print(json.dumps(keypoints.tolist()))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.array_equal(np.asarray(json.loads(done.stdout), np.float32), keypoints)


def test_a_file_not_written_by_transpose_export_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["heatmaps"])],
        "plain",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="was not written by `transpose export`"):
        OnnxPoseModel(tmp_path / "plain.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_every_paper_model_exports_and_verifies(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    card = ModelCard(model=name, image_size=(256, 192), keypoints=COCO)
    report = export_onnx(model, card, tmp_path / f"{name}.onnx")
    assert report.path.is_file() and report.worst_relative_diff <= 1e-4 and report.batch_sizes == (1, 3)
