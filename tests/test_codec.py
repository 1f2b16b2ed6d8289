"""Targets, loss, DARK decoding and flip test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transpose.codec import (
    HeatmapCodec,
    decode_heatmaps,
    flip_back,
    flip_test,
    gaussian_targets,
    gaussian_targets_torch,
    get_max_preds,
)
from transpose.keypoints import COCO
from transpose.losses import weighted_mse_loss


def test_gaussian_target_values_and_weights():
    kpts = np.array([[10.3, 20.7], [-7.9, 5.0], [-8.0, 5.0], [54.1, 30.0], [5.0, 5.0]])
    vis = np.array([1, 1, 1, 1, 0])
    maps, weights = gaussian_targets(kpts, vis, (48, 64), sigma=2.0)
    assert maps.shape == (5, 64, 48)
    assert maps[0, 21, 10] == pytest.approx(np.exp(-(0.3**2 + 0.3**2) / 8), rel=1e-6)
    assert maps[0].max() < 1.0  # peak at a float location, not on a pixel
    # int() truncates: int(-7.9 + 7) = 0 keeps joint 1, int(-8.0 + 7) = -1 < 0 drops joint 2;
    # int(54.1 - 6) = 48 >= W drops joint 3; joint 4 is unlabelled
    assert weights.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert maps[2].max() == 0 and maps[3].max() == 0 and maps[4].max() == 0
    assert maps[1].max() > 0  # outside the map but its 3-sigma window reaches in: still a target
    t_maps, t_weights = gaussian_targets_torch(torch.tensor(kpts)[None], torch.tensor(vis)[None], (48, 64), 2.0)
    assert torch.allclose(t_maps[0], torch.from_numpy(maps), atol=1e-6)
    assert torch.equal(t_weights[0], torch.from_numpy(weights))


def test_weighted_mse_loss_is_half_the_weighted_mean():
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.ones(2, 3, 4, 4)
    weights = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert weighted_mse_loss(pred, target, weights).item() == pytest.approx(0.5 * 3 * 16 / (2 * 3 * 16))


def test_encode_decode_round_trip_is_sub_pixel():
    codec = HeatmapCodec()
    rng = np.random.default_rng(0)
    center, scale = np.array([320.0, 240.0]), np.array([1.2, 1.6])
    # joints well inside the crop (DARK needs 2 px margin; the blur border needs a few more)
    hm_pts = rng.uniform([6, 6], [48 - 7, 64 - 7], size=(200, 2))
    inv = np.linalg.inv(np.vstack([_hm_affine(center, scale), [0, 0, 1]]))[:2]
    image_pts = hm_pts @ inv[:, :2].T + inv[:, 2]
    errors = []
    for chunk in np.split(np.arange(200), 10):
        enc = codec.encode(image_pts[chunk], np.ones(len(chunk)), center, scale)
        assert np.allclose(enc["keypoints"], hm_pts[chunk], atol=1e-4)
        decoded, scores = codec.decode(
            enc["heatmaps"][:, None], np.repeat(center[None], len(chunk), 0), np.repeat(scale[None], len(chunk), 0)
        )
        hm_decoded = decoded[:, 0] @ _hm_affine(center, scale)[:, :2].T + _hm_affine(center, scale)[:, 2]
        errors.append(np.abs(hm_decoded - hm_pts[chunk]).max(axis=1))
        assert (scores > 0.85).all()
    errors = np.concatenate(errors)
    assert errors.max() < 0.05, errors.max()  # heatmap pixels
    plain, _ = decode_heatmaps(codec.encode(image_pts[:20], np.ones(20), center, scale)["heatmaps"][None], dark=False)
    assert np.abs(plain[0] - hm_pts[:20]).max() > 0.2  # argmax alone is quantised: DARK does the work


def _hm_affine(center, scale):
    from transpose.geometry import get_affine_transform

    return get_affine_transform(center, scale, 0.0, (48, 64))


def test_get_max_preds_zeroes_non_positive_maps():
    maps = np.zeros((1, 2, 8, 6), np.float32)
    maps[0, 0, 5, 3] = 0.7
    maps[0, 1] = -1.0
    coords, maxvals = get_max_preds(maps)
    assert coords[0, 0].tolist() == [3.0, 5.0] and maxvals[0, 0, 0] == pytest.approx(0.7)
    assert coords[0, 1].tolist() == [0.0, 0.0] and maxvals[0, 1, 0] == -1.0


def test_flip_back_mirrors_without_shift_and_swaps_sides():
    maps = torch.zeros(1, 17, 64, 48)
    maps[0, 1, 10, 5] = 1.0  # left eye at x = 5
    back = flip_back(maps, COCO.flip_pairs)
    assert back[0, 2, 10, 48 - 1 - 5] == 1.0  # right eye at x = W-1-5, no one-pixel shift
    assert back[0, 1].sum() == 0
    assert torch.equal(flip_back(back, COCO.flip_pairs), maps)


class _MirrorNet(torch.nn.Module):
    """A fixed, non-symmetric convolution producing 17 maps: enough to exercise the flip arithmetic."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 17, 5, padding=2)
        torch.nn.init.normal_(self.conv.weight)

    def forward(self, x):
        return self.conv(x)


def test_flip_test_of_a_symmetric_input_is_flip_consistent():
    net = _MirrorNet().eval()
    half = torch.randn(1, 3, 32, 12)
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)  # equals its mirror image
    out = flip_test(net, symmetric, COCO.flip_pairs)
    # averaging with the mirrored prediction makes the output invariant under flip_back
    assert torch.allclose(flip_back(out, COCO.flip_pairs), out, atol=1e-5)
    plain = net(symmetric)
    assert not torch.allclose(flip_back(plain, COCO.flip_pairs), plain, atol=1e-3)
    # and for any input, flip-testing the mirror image gives the mirrored result
    x = torch.randn(2, 3, 32, 24)
    assert torch.allclose(
        flip_test(net, x.flip(-1), COCO.flip_pairs),
        flip_back(flip_test(net, x, COCO.flip_pairs), COCO.flip_pairs),
        atol=1e-5,
    )
