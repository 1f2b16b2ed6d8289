"""Box -> center/scale, the unbiased affine (against the reference's three-point construction) and round trips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from transpose.geometry import (
    affine_points,
    affine_points_torch,
    box_to_center_scale,
    clean_box,
    flip_joints,
    get_affine_transform,
    get_affine_transform_torch,
    transform_preds,
)


def three_point_affine(center, scale, rot, output_size, inv=False):
    """The reference's construction: two directions with (size-1)*(-0.5), a perpendicular third point."""

    def rotate(p, rad):
        sn, cs = np.sin(rad), np.cos(rad)
        return np.array([p[0] * cs - p[1] * sn, p[0] * sn + p[1] * cs])

    def third(a, b):
        d = a - b
        return b + np.array([-d[1], d[0]])

    src_w = scale[0] * 200.0
    dst_w, dst_h = output_size
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + rotate([0, (src_w - 1) * -0.5], np.pi * rot / 180)
    dst[0] = [(dst_w - 1) * 0.5, (dst_h - 1) * 0.5]
    dst[1] = dst[0] + np.array([0, (dst_w - 1) * -0.5])
    src[2], dst[2] = third(src[0], src[1]), third(dst[0], dst[1])
    return cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)


CASES = [((320.5, 210.0), (1.6, 2.13), 0.0), ((100.0, 400.0), (0.7, 0.93), 30.0), ((55.5, 66.6), (3.1, 4.1), -75.0)]


@pytest.mark.parametrize("center,scale,rot", CASES)
@pytest.mark.parametrize("size", [(192, 256), (48, 64)])
def test_affine_equals_reference_three_point_construction(center, scale, rot, size):
    ours = get_affine_transform(center, scale, rot, size)
    assert np.allclose(ours, three_point_affine(np.array(center), np.array(scale), rot, size), atol=2e-4)
    back = get_affine_transform(center, scale, rot, size, inv=True)
    assert np.allclose(back, three_point_affine(np.array(center), np.array(scale), rot, size, inv=True), atol=2e-3)


@pytest.mark.parametrize("center,scale,rot", CASES)
def test_affine_round_trip_and_convention(center, scale, rot):
    pts = np.random.default_rng(0).uniform(-50, 500, size=(20, 2))
    fwd = get_affine_transform(center, scale, rot, (192, 256))
    inv = get_affine_transform(center, scale, rot, (192, 256), inv=True)
    assert np.allclose(affine_points(affine_points(pts, fwd), inv), pts, atol=1e-9)
    # the centre lands on the crop centre ((w-1)/2, (h-1)/2)
    assert np.allclose(affine_points(np.array(center), fwd), [95.5, 127.5])
    # heatmap x = crop x * 47/191 about the centres: the (size-1) convention, not x/4
    hm = get_affine_transform(center, scale, rot, (48, 64))
    crop_pts, hm_pts = affine_points(pts, fwd), affine_points(pts, hm)
    assert np.allclose(hm_pts - [23.5, 31.5], (crop_pts - [95.5, 127.5]) * 47 / 191, atol=1e-9)
    # transform_preds is the inverse heatmap-size affine without rotation
    if rot == 0:
        assert np.allclose(transform_preds(hm_pts, center, scale, (48, 64)), pts, atol=1e-9)


def test_torch_affine_matches_numpy():
    centers = np.array([c for c, _, _ in CASES])
    scales = np.array([s for _, s, _ in CASES])
    rots = np.array([r for _, _, r in CASES])
    batched = get_affine_transform_torch(torch.tensor(centers), torch.tensor(scales), torch.tensor(rots), (48, 64))
    for i in range(len(CASES)):
        assert np.allclose(
            batched[i].numpy(), get_affine_transform(centers[i], scales[i], rots[i], (48, 64)), atol=1e-10
        )
    pts = torch.rand(3, 17, 2, dtype=torch.float64) * 300
    mapped = affine_points_torch(pts, batched)
    assert np.allclose(mapped[1].numpy(), affine_points(pts[1].numpy(), batched[1].numpy()))


def test_box_to_center_scale():
    center, scale = box_to_center_scale([10, 20, 101, 41], aspect_ratio=0.75)
    assert np.allclose(center, [60.0, 40.0])  # x + (w-1)/2, y + (h-1)/2
    assert np.allclose(scale, np.array([101, 101 / 0.75]) / 200 * 1.25)  # widened to w/h = 0.75, x1.25
    _, tall = box_to_center_scale([0, 0, 30, 200], aspect_ratio=0.75)
    assert np.allclose(tall, np.array([150, 200]) / 200 * 1.25)


def test_clean_box_shifts_negative_boxes_and_drops_empty_ones():
    assert np.allclose(clean_box([-5, 10, 50, 20], 640, 480), [0, 10, 49, 19])  # shifted, not cut
    assert np.allclose(clean_box([600, 470, 100, 100], 640, 480), [600, 470, 39, 9])
    assert clean_box([10, 10, 0, 20], 640, 480) is None
    assert clean_box([700, 10, 20, 20], 640, 480) is None


def test_flip_joints_mirrors_and_swaps():
    joints = np.array([[10.0, 5.0], [20.0, 6.0], [30.0, 7.0]])
    vis = np.array([1.0, 1.0, 0.0])
    flipped, fvis = flip_joints(joints, vis, image_width=100, flip_pairs=[(1, 2)])
    assert np.allclose(flipped[0], [89.0, 5.0])
    assert np.allclose(flipped[1], [0.0, 0.0]) and fvis[1] == 0  # joint 2 (unlabelled) moved to slot 1
    assert np.allclose(flipped[2], [79.0, 6.0]) and fvis[2] == 1
