"""Attention areas (Eq. 4) on hand-made maps, and the figure and CLI on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cli.main import main as cli
from transpose.codec import HeatmapCodec
from transpose.explain import attention_areas, default_threshold, explain_crop, keypoint_tokens, plot_attention_areas
from transpose.keypoints import COCO
from transpose.models import ModelCard, create_model

CODEC = HeatmapCodec()  # 256x192 input, 64x48 heatmaps: stride 4


def test_keypoint_tokens_follow_the_papers_mapping():
    # heatmap p -> input pixel p*4 + 0.5 -> token by integer division by the stride
    kpts = np.array([[0.0, 0.0], [1.9, 1.8], [47.0, 63.0]])
    assert CODEC.visual_pixel(kpts).tolist() == [[0.5, 0.5], [8.1, 7.7], [188.5, 252.5]]
    assert keypoint_tokens(kpts, (32, 24), 8, CODEC).tolist() == [0, 1, 31 * 24 + 23]  # (8.1, 7.7) -> col 1, row 0
    assert keypoint_tokens(kpts, (64, 48), 4, CODEC).tolist() == [0, 48 + 2, 63 * 48 + 47]


def test_dependency_and_affected_areas_are_rows_and_columns():
    grid = (4, 3)
    length = 12
    a = torch.full((length, length), 0.001)
    a[5, 7] = 0.5  # token 5 depends on token 7
    a[2, 5] = 0.3  # token 2 is affected by token 5
    areas = attention_areas([a, a * 2], np.array([[4.0, 2.0]]), grid, 8, 0.01, CODEC)  # pixel (16.5, 8.5)
    tok = int(areas.keypoint_tokens[0])
    assert tok == 1 * 3 + 2 == 5
    assert areas.dependency.shape == (2, 1, 4, 3)
    dep = areas.dependency[0, 0].ravel()
    assert dep[7] == pytest.approx(0.5) and np.count_nonzero(dep) == 1  # 0.001 < delta is cut
    aff = areas.affected[1, 0].ravel()
    assert aff[2] == pytest.approx(0.6) and np.count_nonzero(aff) == 1
    assert areas.upsampled().shape == (2, 1, 32, 24)


def test_explain_crop_and_figure(tmp_path):
    model = create_model("transpose_h_s", image_size=(128, 96))
    crop = torch.randn(3, 128, 96)
    areas, keypoints, _ = explain_crop(model, crop, threshold=0.0)
    assert areas.dependency.shape == (4, 17, 32, 24) and areas.threshold == 0.0
    # keypoints come back in crop pixels: the model's codec, heatmap (0, 0) -> crop (0, 0), (23, 31) -> (95, 127)
    codec = model.data_config.codec()
    with torch.no_grad():
        heatmaps = model(crop[None], return_attention=True)[0].numpy()
    np.testing.assert_allclose(keypoints, codec.heatmap_to_crop(codec.decode_heatmap_coords(heatmaps)[0][0]))
    corners = codec.heatmap_to_crop(np.array([[0.0, 0.0], [23.0, 31.0]]))  # one factor, 95/23, in x and y
    np.testing.assert_allclose(corners, [[0.0, 63.5 - 15.5 * 95 / 23], [95.0, 63.5 + 15.5 * 95 / 23]])
    # with delta 0 every row is a full attention row: it sums to one
    assert np.allclose(areas.dependency.sum(axis=(2, 3)), 1.0, atol=1e-4)
    assert default_threshold(model.stride) == 0.00075 and default_threshold(8) == 0.01
    out = plot_attention_areas(np.zeros((128, 96, 3), np.uint8), keypoints, areas, COCO, tmp_path / "fig.png")
    assert out.stat().st_size > 10_000


PHOTO = ("coco", "000000000785.jpg")  # a skier; the box below is the person
BOX = "280,44,218,346"


def test_cli_explain_on_a_real_photo(realdata, tmp_path, capsys):
    out, page = tmp_path / "explain.png", tmp_path / "explain.html"
    code = cli(
        ["explain", "--arch", "transpose_r_a3", "--random-weights", "--image", str(realdata.joinpath(*PHOTO)),
         "--box", BOX, "--out", str(out), "--html", str(page), "--areas", "affected"]
    )  # fmt: skip
    assert code == 0 and out.stat().st_size > 10_000
    assert 1_000_000 < page.stat().st_size < 10_000_000  # 3 layers x 768 rows, as bytes in base64
    printed = capsys.readouterr().out
    assert "figure written" in printed and "page written" in printed
    assert "(random weights)" in page.read_text()[:20_000]  # said in the title
    missing = ["explain", "--arch", "transpose_r_a3", "--random-weights", "--image", str(tmp_path / "none.jpg")]
    assert cli([*missing, "--box", "1,1,5,5", "--out", str(out)]) == 2


def test_cli_explain_refuses_random_weights_unless_asked(realdata, tmp_path, capsys):
    args = ["explain", "--image", str(realdata.joinpath(*PHOTO)), "--box", BOX, "--html", str(tmp_path / "p.html")]
    assert cli([*args, "--arch", "transpose_r_a3"]) == 2
    err = capsys.readouterr().err
    assert "no trained weights" in err and "--model" in err and "--arch NAME --random-weights" in err
    assert cli(args) == 2 and "--random-weights" in capsys.readouterr().err
    assert cli([*args[:-2], "--arch", "transpose_r_a3", "--random-weights"]) == 2  # neither --out nor --html
    assert "--out FIG.png and/or --html PAGE.html" in capsys.readouterr().err
    assert not (tmp_path / "p.html").exists()


def test_cli_explain_takes_the_model_forms_of_predict(realdata, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    card = ModelCard("transpose_r_tiny", (128, 96), COCO)
    torch.save(card.build().state_dict(), run / "best.pth")
    args = ["explain", "--image", str(realdata.joinpath(*PHOTO)), "--box", BOX]
    for i, model in enumerate((run, run / "best.pth")):  # a run directory, a checkpoint with its card beside it
        page = tmp_path / f"page{i}.html"
        assert cli([*args, "--model", str(model), "--html", str(page)]) == 2  # no model.json yet
        assert "no model.json" in capsys.readouterr().err and not page.exists()
        card.write(run / "model.json")
        assert cli([*args, "--model", str(model), "--html", str(page)]) == 0 and page.stat().st_size > 50_000
        (run / "model.json").unlink()
    # weights without a card, said by hand; --random-weights makes no sense beside trained weights
    hand = ["--model", str(run / "best.pth"), "--arch", "transpose_r_tiny", "--keypoints", "coco"]
    assert cli([*args, *hand, "--image-size", "128", "96", "--out", str(tmp_path / "fig.png")]) == 0
    assert cli([*args, *hand, "--random-weights", "--html", str(tmp_path / "x.html")]) == 2
    assert "--random-weights is for --arch without --model" in capsys.readouterr().err
    assert cli([*args, "--model", str(tmp_path / "nowhere"), "--html", str(tmp_path / "x.html")]) == 2
    assert "models:/NAME@ALIAS" in capsys.readouterr().err
