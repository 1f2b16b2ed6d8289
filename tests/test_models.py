"""Models: exact reference keys/shapes/parameter counts, forward/backward, attention paths, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from transpose.models import (
    CheckpointMismatchError,
    create_model,
    list_models,
    load_pretrained_backbone,
    load_reference_checkpoint,
)
from transpose.models.position_encoding import sine_position_embedding
from transpose.models.transformer import TransformerEncoderLayer

PARAM_COUNTS = {  # spec Table 1 (measured on the reference implementation), and Table 7's H-A5
    "transpose_r_a3": (5_195_345, 4_998_737),
    "transpose_r_a4": (5_985_105, 5_788_497),
    "transpose_h_s": (8_019_281, 7_822_673),
    "transpose_h_a4": (17_306_129, 17_011_217),
    "transpose_h_a5": (17_380_913, None),
    "transpose_h_a6": (17_455_697, 17_160_785),
}
KEYED_MODELS = [
    "transpose_r_a3",
    "transpose_r_a4",
    "transpose_h_s",
    "transpose_h_a4",
    "transpose_h_a5",
    "transpose_h_a6",
    "transpose_h_w48_d64",
    "transpose_h_w48_d192_mh2",
]


def read_key_list(path) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(v) for v in shape.strip("()").split(",") if v.strip())))
    return rows


def lively(model: nn.Module, gain: float = 0.5) -> nn.Module:
    """Re-initialise convs so heatmaps are O(0.1-1) like a trained model's (the reference init gives ~1e-3,
    which would hide any difference). BatchNorm stays the identity in eval mode."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.weight.data = torch.randn(m.weight.shape, generator=gen) * gain / math.sqrt(m.weight[0].numel())
    return model.eval()


@pytest.mark.parametrize("name", KEYED_MODELS)
def test_state_dict_keys_and_shapes_equal_reference(name, spec_keys_dir):
    reference = read_key_list(spec_keys_dir / f"{name}.txt")
    ours = [(k, tuple(v.shape)) for k, v in create_model(name).state_dict().items()]
    assert ours == reference


def test_every_reference_key_list_has_a_registered_model(spec_keys_dir):
    assert {p.stem for p in spec_keys_dir.glob("*.txt")} <= set(list_models())


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts_equal_reference(name):
    model = create_model(name)
    total, trainable = PARAM_COUNTS[name]
    assert sum(p.numel() for p in model.parameters()) == total
    if trainable is not None:
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable


def test_backbone_parameter_counts():
    from transpose.models.hrnet_s import HRNetS
    from transpose.models.resnet_s import ResNetS

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ResNetS()) == 1_444_928
    assert count(HRNetS(width=32)) == 7_685_632
    assert count(HRNetS(width=48)) == 16_705_824


def test_r_a3_star_is_the_papers_5m_bilinear_variant():
    model = create_model("transpose_r_a3_star")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 5.0
    assert model.deconv_layers is None and len(model.layer2) == 7
    assert model(torch.randn(1, 3, 256, 192)).shape == (1, 17, 64, 48)


def test_table7_depth_variants_by_argument():
    for layers in (2, 5, 6):
        model = create_model("transpose_r_a4", num_layers=layers)
        assert len(model.global_encoder.layers) == layers


def test_sine_embedding_check_values():
    r = create_model("transpose_r_a4").pos_embedding
    h = create_model("transpose_h_a4").pos_embedding
    assert r.shape == (768, 1, 256) and not r.requires_grad
    assert torch.allclose(r[:24, 0, 0], torch.full((24,), math.sin(2 * math.pi / 32)), atol=1e-6)
    assert abs(r[0, 0, 0].item() - 0.19509) < 1e-5
    assert abs(h[0, 0, 0].item() - 0.098017) < 1e-6
    table = sine_position_embedding(32, 24, 256)[:, 0].reshape(32, 24, 256)
    # first half encodes y only, second half x only; channel 1 is cos of the same angle as channel 0
    assert torch.allclose(table[:, 0, :128], table[:, 5, :128])
    assert torch.allclose(table[0, :, 128:], table[7, :, 128:])
    assert torch.allclose(table[3, 0, 1], torch.tensor(math.cos(4 * 2 * math.pi / (32 + 1e-6))), atol=1e-6)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_variant(name):
    model = create_model(name, image_size=(128, 96))
    x = torch.randn(2, 3, 128, 96)
    out = model(x)
    assert out.shape == (2, 17, 32, 24) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]
    assert model.data_config.heatmap_size == (32, 24)


@pytest.mark.parametrize("name", ["transpose_r_a4", "transpose_h_a4"])
def test_sdpa_and_attention_paths_agree(name):
    model = lively(create_model(name))
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        fast = model(x)
        slow, maps = model(x, return_attention=True)
    assert fast.abs().max() > 0.3  # heatmap-sized outputs, not trivially small ones
    # float32: the fused kernel and the explicit softmax round differently; both stay within 1e-5 here
    assert torch.allclose(fast, slow, atol=1e-5, rtol=0)
    tokens = 768 if name.startswith("transpose_r") else 3072
    assert len(maps) == len(model.global_encoder.layers)
    assert all(m.shape == (1, tokens, tokens) for m in maps)
    assert torch.allclose(maps[-1].sum(-1), torch.ones(1, tokens), atol=1e-5)


def test_encoder_layer_equals_torch_multihead_attention_reference():
    """Our layer against the reference's formulation written with nn.MultiheadAttention (seq-first)."""
    d, heads, length = 64, 8, 50
    layer = TransformerEncoderLayer(d, heads, 128, dropout=0.1).eval()
    mha = nn.MultiheadAttention(d, heads, dropout=0.1).eval()
    mha.load_state_dict(layer.self_attn.state_dict())
    x, pos = torch.randn(3, length, d), torch.randn(1, length, d)
    with torch.no_grad():
        ours, weights = layer(x, pos, need_weights=True)
        src, p = x.transpose(0, 1), pos.transpose(0, 1)
        attended, ref_weights = mha(src + p, src + p, value=src)  # q = k = x + P, v = x
        z = layer.norm1(src + attended)
        ref = layer.norm2(z + layer.linear2(torch.relu(layer.linear1(z)))).transpose(0, 1)
        fast, _ = layer(x, pos, need_weights=False)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(fast, ref, atol=1e-5)
    assert torch.allclose(weights, ref_weights, atol=1e-6)  # head-averaged, [B, L, L]


def test_position_embedding_is_added_in_every_layer():
    model = lively(create_model("transpose_r_a3"))
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        base = model(x)
        model.pos_embedding.data[:, :, :] += 1.0
        shifted = model(x)
    assert (base - shifted).abs().max() > 1e-3


@pytest.mark.parametrize("pos", ["sine", "learnable", "none"])
@pytest.mark.parametrize("size", [(128, 96), (384, 288)])
def test_other_input_sizes(pos, size):
    model = create_model("transpose_r_a3", pos_embedding=pos).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 17, size[0] // 4, size[1] // 4)
    if pos == "sine":
        table = model.position_table((size[0] // 8, size[1] // 8))
        expected = sine_position_embedding(size[0] // 8, size[1] // 8, 256).transpose(0, 1)
        assert torch.equal(table, expected)
    if pos == "learnable":
        assert torch.equal(model.position_table(model.token_grid), model.pos_embedding.transpose(0, 1))


def test_bad_input_sizes_and_names_are_explained():
    with pytest.raises(ValueError, match="divisible by 8"):
        create_model("transpose_r_a4", image_size=(250, 190))
    with pytest.raises(ValueError, match="divisible by 16"):
        create_model("transpose_h_a4", image_size=(264, 200))
    model = create_model("transpose_h_s")
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 3, 260, 192))
    with pytest.raises(ValueError, match=r"expects images \[B, 3, H, W\]"):
        model(torch.randn(3, 256, 192))
    with pytest.raises(ValueError, match="unknown model 'transpose_x'.*transpose_r_a4"):
        create_model("transpose_x")
    with pytest.raises(ValueError, match="never downloaded"):
        create_model("transpose_r_a4", pretrained=True)


def test_reference_checkpoint_formats_load_strictly(tmp_path):
    source = lively(create_model("transpose_r_a3"))
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        expected = source(x)
    bare = tmp_path / "model_best.pth"
    torch.save(source.state_dict(), bare)
    wrapped = tmp_path / "checkpoint.pth"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state, "perf": 0.7, "optimizer": {"state": {}, "param_groups": []}}, wrapped)
    for path in (bare, wrapped):
        model = create_model("transpose_r_a3", pretrained=path).eval()
        with torch.no_grad():
            assert torch.equal(model(x), expected)


def test_checkpoint_mismatches_are_explained(tmp_path):
    path = tmp_path / "mpii.pth"
    torch.save(create_model("transpose_r_a4", num_keypoints=16).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="16 keypoints.*num_keypoints=16"):
        create_model("transpose_r_a4", pretrained=path)
    foreign = tmp_path / "h.pth"
    torch.save(create_model("transpose_h_s").state_dict(), foreign)
    with pytest.raises(CheckpointMismatchError) as err:
        load_reference_checkpoint(create_model("transpose_r_a4"), foreign)
    text = str(err.value)
    assert "missing keys" in text and "layer2.0.*" in text
    assert "unexpected keys" in text and "stage3.0" in text
    deeper = tmp_path / "a4.pth"
    torch.save(create_model("transpose_r_a4").state_dict(), deeper)
    with pytest.raises(CheckpointMismatchError, match="unexpected keys.*global_encoder.layers.3"):
        load_reference_checkpoint(create_model("transpose_r_a3"), deeper)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="cannot read"):
        load_reference_checkpoint(create_model("transpose_r_a3"), junk)


def test_checkpoint_from_another_input_size_adapts_the_position_table(tmp_path):
    path = tmp_path / "learn.pth"
    torch.save(create_model("transpose_r_a3", pos_embedding="learnable").state_dict(), path)
    model = create_model("transpose_r_a3", pos_embedding="learnable", image_size=(384, 288), pretrained=path)
    assert model.pos_embedding.shape == (48 * 36, 1, 256)


def test_pretrained_backbone_file_loads_backbone_only(tmp_path):
    donor = lively(create_model("transpose_r_a4"))
    imagenet = {k: v for k, v in donor.state_dict().items() if k.startswith(("conv1", "bn1", "layer1", "layer2"))}
    imagenet["layer3.0.conv1.weight"] = torch.zeros(256, 512, 1, 1)
    imagenet["fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "resnet50.pth"
    torch.save(imagenet, path)
    model = create_model("transpose_r_a4", pretrained_backbone=path)
    assert torch.equal(model.layer2[3].conv3.weight, donor.layer2[3].conv3.weight)
    assert not torch.equal(model.reduce.weight, donor.reduce.weight)
    report = load_pretrained_backbone(create_model("transpose_r_a4"), path)
    assert report == {"loaded": len(imagenet) - 2, "ignored": 2}
    with pytest.raises(CheckpointMismatchError, match="another width"):
        load_pretrained_backbone(create_model("transpose_r_a4", base_width=32), path)


def test_reset_head_for_transfer():
    model = create_model("transpose_r_a4")
    model.reset_head(16)
    assert model.num_keypoints == 16
    assert model(torch.randn(1, 3, 256, 192)).shape == (1, 16, 64, 48)


def test_model_card_rebuilds_a_checkpoint(tmp_path):
    from transpose.keypoints import MPII
    from transpose.models import ModelCard, load_model, load_trained

    torch.manual_seed(0)
    card = ModelCard("transpose_r_tiny", (128, 96), MPII, "mpii", {"num_layers": 2}, {"shards": "data/shards/mpii"})
    model = card.build().eval()
    assert model.num_keypoints == 16 and len(model.global_encoder.layers) == 2
    torch.save(model.state_dict(), tmp_path / "best.pth")
    card.write(tmp_path / "model.json")
    assert ModelCard.read(tmp_path / "model.json") == card  # the keypoint set travels whole: flip pairs, skeleton
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        for source in (tmp_path / "best.pth", tmp_path):  # the file or its run directory
            assert torch.equal(load_model(source)(x), model(x))
    assert load_trained(tmp_path)[1].keypoints.flip_pairs == MPII.flip_pairs
    (tmp_path / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="no model.json beside"):
        load_model(tmp_path / "best.pth")
    (tmp_path / "model.json").write_text('{"model": "transpose_nope", "num_keypoints": 17, "image_size": [8, 8]}')
    with pytest.raises(ValueError, match="unknown model 'transpose_nope'"):
        load_model(tmp_path / "best.pth")


def test_format_1_model_cards_still_load(tmp_path):
    """Cards written before keypoint sets travelled named only their dataset (coco / mpii)."""
    from transpose.keypoints import COCO
    from transpose.models import ModelCard

    path = tmp_path / "model.json"
    path.write_text('{"model": "transpose_r_tiny", "num_keypoints": 17, "image_size": [128, 96], "dataset": "coco"}')
    card = ModelCard.read(path)
    assert (card.keypoints, card.dataset_kind, card.image_size) == (COCO, "coco", (128, 96))
    path.write_text('{"model": "transpose_r_tiny", "num_keypoints": 5, "image_size": [128, 96], "dataset": "coco"}')
    with pytest.raises(ValueError, match="not a model card"):
        ModelCard.read(path)
