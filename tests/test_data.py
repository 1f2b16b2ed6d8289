"""Readers, shards and both loaders on the real COCO/MPII fixtures: counts, geometry, targets, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataops.augment import AugmentConfig, FixedDraw
from dataops.datasets import read_coco_detections, read_coco_keypoints, read_mpii
from dataops.loaders import LoaderConfig, crop_joints, make_targets, torch_loader
from dataops.loaders.dali_loader import DaliLoader
from dataops.loaders.visualize import plot_batch
from dataops.shards import ShardConfig, stored_reach, write_shards
from transpose.codec import HeatmapCodec
from transpose.evaluation import CocoFormatError
from transpose.geometry import box_to_center_scale, clean_box, flip_joints, get_affine_transform
from transpose.keypoints import COCO, MPII
from transpose.models.transpose_net import IMAGENET_MEAN, IMAGENET_STD

CODEC = HeatmapCodec()  # of a 256x192 model, the loaders' default input size
FIXED_DRAWS = [
    FixedDraw(1.1, 30.0, True, 0),
    FixedDraw(0.8, -20.0, False, 0),
    FixedDraw(1.0, 0.0, False, 1),
    FixedDraw(1.25, 60.0, True, 2),
    FixedDraw(0.9, -40.0, True, 1, (0.12, -0.16)),  # with a centre shift (not in the reference)
]


@pytest.fixture(scope="module")
def coco_shards(realdata, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coco_shards")
    records, report, kset = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    write_shards(records, kset, out, "val", ShardConfig(samples_per_shard=5, workers=1), report, progress=False)
    return out


def test_coco_reader_cleans_like_the_reference(realdata):
    records, report, kset = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    data = json.loads((realdata / "coco" / "test_coco.json").read_text())
    assert kset.num_keypoints == 17 and kset.flip_pairs == COCO.flip_pairs
    assert len(records) == 12 and report.counts == {"no labelled keypoints": 2}
    ann = next(a for a in data["annotations"] if a["id"] == records[0].annotation_id)
    image = next(i for i in data["images"] if i["id"] == ann["image_id"])
    center, scale = box_to_center_scale(clean_box(ann["bbox"], image["width"], image["height"]), 0.75)
    assert np.allclose(records[0].center, center) and np.allclose(records[0].scale, scale)
    kpts = np.array(ann["keypoints"]).reshape(17, 3)
    assert np.allclose(records[0].joints, kpts[:, :2]) and set(records[0].visible.tolist()) <= {0.0, 1.0}
    assert np.array_equal(records[0].visible, (kpts[:, 2] > 0).astype(np.float32))  # v=2 -> 1


def test_detection_reader(realdata):
    records, report, _ = read_coco_detections(
        realdata / "coco" / "test_coco.json", realdata / "coco" / "test_coco_det_AP_H_56.json", realdata / "coco"
    )
    assert len(records) == 118 and report.total == 0
    scores = [r.score for r in records]
    assert min(scores) > 0.002 and max(scores) <= 1.0 and not any(r.visible.any() for r in records)


def test_mpii_reader_conventions(realdata):
    records, report = read_mpii(realdata / "mpii" / "test_mpii.json", realdata / "mpii")
    entry = json.loads((realdata / "mpii" / "test_mpii.json").read_text())[0]
    assert len(records) == 5 and report.total == 0
    s = entry["scale"]
    assert np.allclose(records[0].center, [entry["center"][0] - 1, entry["center"][1] + 15 * s - 1])
    assert np.allclose(records[0].scale, [1.25 * s, 1.25 * s])
    assert np.allclose(records[0].joints, np.array(entry["joints"]) - 1)


def test_malformed_input_is_skipped_counted_and_named(realdata, tmp_path):
    data = json.loads((realdata / "coco" / "test_coco.json").read_text())
    data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:30]
    data["annotations"][1]["bbox"] = [10, 10, 0, 0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    records, report, _ = read_coco_keypoints(bad, realdata / "coco")
    assert report.counts["malformed annotation"] == 1 and report.counts["degenerate box"] == 1
    assert "bad.json: annotations[0]" in report.examples["malformed annotation"][0]
    assert len(records) == 10
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CocoFormatError, match="broken.json is not valid JSON"):
        read_coco_keypoints(tmp_path / "broken.json", realdata / "coco")


def test_corrupt_and_missing_images_are_skipped_while_sharding(realdata, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(realdata / "coco", images)
    raw = (images / "000000040083.jpg").read_bytes()
    (images / "000000040083.jpg").write_bytes(raw[: len(raw) // 2])  # truncated JPEG: 3 persons
    (images / "000000000785.jpg").unlink()  # missing: 1 person
    records, report, kset = read_coco_keypoints(images / "test_coco.json", images)
    manifest = write_shards(
        records, kset, tmp_path / "shards", "val", ShardConfig(samples_per_shard=4, workers=1), report, False
    )
    skipped = manifest["skipped"]["by_reason"]
    assert skipped == {"corrupt image": 2, "missing image": 1, "no labelled keypoints": 2}
    assert manifest["samples"] == 12 - 3
    assert "000000040083.jpg" in manifest["skipped"]["examples"]["corrupt image"][0]


def test_shards_are_deterministic_resumable_and_indexed(realdata, tmp_path, coco_shards):
    records, report, kset = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    config = ShardConfig(samples_per_shard=5, workers=2)
    manifest = write_shards(records, kset, tmp_path, "val", config, report, progress=False)
    assert [s["sha256"] for s in manifest["shards"]] == [
        s["sha256"] for s in json.loads((coco_shards / "val-manifest.json").read_text())["shards"]
    ]  # byte-identical to the fixture's run (1 worker vs 2)
    assert manifest["samples"] == 12 and len(manifest["shards"]) == 3
    # the index equals what DALI's own wds2idx makes
    wds2idx = Path(sys.executable).parent / "wds2idx"
    subprocess.run(
        [str(wds2idx), str(tmp_path / "val-00001.tar"), str(tmp_path / "ref.idx")], check=True, capture_output=True
    )
    assert (tmp_path / "ref.idx").read_text() == (tmp_path / "val-00001.idx").read_text()
    # an interrupted run: shard 1 never finished; a rerun writes it and keeps the others untouched
    (tmp_path / "val-00001.tar").unlink()
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "val-00000.tar", tmp_path / "val-00002.tar")}
    again = write_shards(records, kset, tmp_path, "val", config, report, progress=False)
    assert again == manifest
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())


def test_truncated_tar_loses_only_its_tail(coco_shards, tmp_path):
    for f in coco_shards.iterdir():
        shutil.copy(f, tmp_path / f.name)
    tar = tmp_path / "val-00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    config = LoaderConfig(batch_size=4, workers=0, augment=AugmentConfig(enabled=False), shuffle=False)
    loader, _ = torch_loader(tmp_path, "val", config)
    dali = DaliLoader(tmp_path, "val", replace(config, workers=1))
    assert loader.dataset.skipped.counts["truncated shard"] == dali.skipped.counts["truncated shard"] > 0
    lost = loader.dataset.skipped.counts["truncated shard"]
    seen_torch = [i for b in loader for i, v in zip(b["ids"][:, 1].tolist(), b["valid"].tolist()) if v]
    seen_dali = [i for b in dali for i, v in zip(b["ids"][:, 1].tolist(), b["valid"].tolist()) if v]
    assert len(seen_torch) == len(seen_dali) == 12 - lost
    assert sorted(seen_torch) == sorted(seen_dali)


@pytest.mark.parametrize("cpu_warp", ["opencv", "dali"])
@pytest.mark.parametrize("fixed", FIXED_DRAWS)
def test_dali_and_torch_twin_give_the_same_crops_joints_and_targets(coco_shards, fixed, cpu_warp):
    config = LoaderConfig(batch_size=4, workers=1, fixed=fixed, shuffle=False, cpu_warp=cpu_warp)
    dali = DaliLoader(coco_shards, "val", config)
    twin, _ = torch_loader(coco_shards, "val", replace(config, workers=0))
    batches = 0
    for a, b in zip(dali, twin):
        batches += 1
        assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["flip"], b["flip"])
        grey_levels = (a["image"] - b["image"]).abs() * 255 * 0.226  # undo the normalisation (mean std)
        assert grey_levels.mean() < 0.05 and grey_levels.max() < 2.0  # OpenCV's 5-bit bilinear weights: +-1
        ta, wa, ja = make_targets(a, COCO, CODEC)
        tb, wb, jb = make_targets(b, COCO, CODEC)
        assert torch.equal(wa, wb)
        assert (ja - jb).abs().max() < 1e-3 and (ta - tb).abs().max() < 1e-4
    assert batches == 3


@pytest.mark.parametrize("fixed", FIXED_DRAWS[:2])
def test_loader_geometry_matches_the_reference_pipeline(realdata, coco_shards, fixed):
    """Reference: flip the whole image and its joints, then the unbiased affine and codec on the full image."""
    config = LoaderConfig(batch_size=12, workers=1, fixed=fixed, shuffle=False)
    batch = next(iter(DaliLoader(coco_shards, "val", config)))
    records, _, _ = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    by_id = {r.annotation_id: r for r in records}
    codec = HeatmapCodec()
    targets, weights, joints_hm = make_targets(batch, COCO, CODEC)
    for i, ann_id in enumerate(batch["ids"][:, 1].tolist()):
        rec = by_id[ann_id]
        image = cv2.cvtColor(cv2.imread(str(rec.image_path)), cv2.COLOR_BGR2RGB)
        width = image.shape[1]
        joints, vis, center = rec.joints, rec.visible, rec.center.copy()
        if fixed.flip:
            image = image[:, ::-1]
            joints, vis = flip_joints(joints, vis, width, COCO.flip_pairs)
            center[0] = width - 1 - center[0]
        scale = rec.scale * fixed.scale_mult
        matrix = get_affine_transform(center, scale, fixed.rotation, (192, 256))
        crop = cv2.warpAffine(np.ascontiguousarray(image), matrix, (192, 256), flags=cv2.INTER_LINEAR)
        ours = batch["image"][i].permute(1, 2, 0).numpy() * np.array(config.std) + np.array(config.mean)
        # the stored region is re-encoded at JPEG q95 (4:4:4): about half a grey level per pixel, ~1 after the warp
        assert np.abs(ours * 255 - crop).mean() < 1.5
        enc = codec.encode(joints, vis, center, scale, fixed.rotation)
        assert np.abs(joints_hm[i].numpy()[vis > 0] - enc["keypoints"][vis > 0]).max() < 1e-3
        assert np.array_equal(weights[i].numpy(), enc["keypoint_weights"])
        assert np.abs(targets[i].numpy() - enc["heatmaps"]).max() < 1e-4


def test_whole_image_storage_gives_the_reference_crop_exactly(realdata, tmp_path):
    records, report, kset = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    write_shards(records[:3], kset, tmp_path, "val", ShardConfig(store="image", workers=1), report, False)
    assert stored_reach(tmp_path, "val") is None  # whole images: any augmentation fits
    fixed = FixedDraw(1.1, 30.0, False, 0)
    batch = next(iter(DaliLoader(tmp_path, "val", LoaderConfig(batch_size=3, workers=1, fixed=fixed, shuffle=False))))
    for i, rec in enumerate(records[:3]):
        image = cv2.cvtColor(cv2.imread(str(rec.image_path)), cv2.COLOR_BGR2RGB)
        matrix = get_affine_transform(rec.center, rec.scale * 1.1, 30.0, (192, 256))
        crop = cv2.warpAffine(image, matrix, (192, 256), flags=cv2.INTER_LINEAR)
        ours = batch["image"][i].permute(1, 2, 0).numpy() * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
        assert np.abs(ours * 255 - crop).mean() < 0.05  # only OpenCV's fixed-point bilinear rounding differs


def test_shifted_crops_need_shards_cut_for_the_shift(realdata, tmp_path):
    """The largest shift at the largest scale gives the reference's crop of the whole image when the shards were
    cut for it (shard.max_shift); regions cut for no shift miss part of such a crop."""
    records, report, kset = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    by_id = {r.annotation_id: r for r in records}
    fixed = FixedDraw(1.35, 45.0, False, 0, (0.16, -0.16))
    config = LoaderConfig(batch_size=12, workers=1, fixed=fixed, shuffle=False)
    errors = {}
    for reach in (0.0, 0.16):
        out = tmp_path / f"reach_{reach}"
        cut_for = ShardConfig(samples_per_shard=12, workers=1, augment=AugmentConfig(shift_factor=reach))
        write_shards(records, kset, out, "val", cut_for, report, progress=False)
        assert stored_reach(out, "val") == cut_for.augment  # what training checks its augmentation against
        batch = next(iter(DaliLoader(out, "val", config)))
        targets, _, joints_hm = make_targets(batch, COCO, CODEC)
        errors[reach] = []
        for i, ann_id in enumerate(batch["ids"][:, 1].tolist()):
            rec = by_id[ann_id]
            image = cv2.cvtColor(cv2.imread(str(rec.image_path)), cv2.COLOR_BGR2RGB)
            center = rec.center + np.array([0.16, -0.16]) * rec.scale * 200
            matrix = get_affine_transform(center, rec.scale * 1.35, 45.0, (192, 256))
            crop = cv2.warpAffine(image, matrix, (192, 256), flags=cv2.INTER_LINEAR)
            ours = batch["image"][i].permute(1, 2, 0).numpy() * np.array(config.std) + np.array(config.mean)
            errors[reach].append(np.abs(ours * 255 - crop).mean())
            if reach:  # and the targets are the reference codec's for the shifted centre
                enc = HeatmapCodec().encode(rec.joints, rec.visible, center, rec.scale * 1.35, 45.0)
                seen = rec.visible > 0
                assert np.abs(joints_hm[i].numpy()[seen] - enc["keypoints"][seen]).max() < 1e-3
                assert np.abs(targets[i].numpy() - enc["heatmaps"]).max() < 1e-4
    assert max(errors[0.16]) < 1.5  # JPEG q95 re-encoding only, as in the unshifted geometry test
    missed = np.array(errors[0.0]) - np.array(errors[0.16])  # black where the image goes on
    assert missed.min() > -1e-3 and (missed > 0.5).sum() >= 4


def test_random_shift_moves_the_centre_within_its_factor_in_both_loaders(coco_shards):
    aug = AugmentConfig(
        shift_factor=0.16, shift_prob=0.5, scale_factor=0.0, rotation_prob=0.0, flip_prob=0.0, half_body_prob=0.0
    )
    config = LoaderConfig(batch_size=12, workers=1, shuffle=False, augment=aug)
    for loader in (
        DaliLoader(coco_shards, "val", config),
        torch_loader(coco_shards, "val", replace(config, workers=0))[0],
    ):
        moved = torch.cat(
            [(b["center"] - b["geom"][:, 0:2]) / (b["geom"][:, 2:4] * 200) for _ in range(4) for b in loader]
        )
        assert len(moved) == 48 and moved.abs().max() <= 0.16 + 1e-5
        assert 0.25 < (moved.abs() > 1e-6).any(dim=1).float().mean() < 0.75  # shift_prob 0.5
        assert moved.abs().max() > 0.1  # uniform over [-0.16, 0.16], not a fixed offset


def test_random_augmentation_joints_map_back_to_the_annotations(coco_shards, tmp_path):
    config = LoaderConfig(batch_size=12, workers=1, shuffle=True)
    figure = plot_batch(
        next(iter(DaliLoader(coco_shards, "val", config))), COCO, tmp_path / "b.png", config.mean, config.std
    )
    assert figure.stat().st_size > 10_000  # what training sees, as in docs/figures/augmented_real_crops.png
    for batch in (
        next(iter(DaliLoader(coco_shards, "val", config))),
        next(iter(torch_loader(coco_shards, "val", replace(config, workers=0))[0])),
    ):
        joints, visible = crop_joints(batch, COCO)
        matrix = batch["matrix"].double()
        flipped = batch["flip"] > 0.5
        order = torch.tensor(COCO.flip_index())
        stored = torch.where(flipped[:, None, None], batch["kpt"][:, order, :2], batch["kpt"][..., :2]).double()
        linear, shift = matrix[:, :, :2], matrix[:, :, 2]
        back = torch.linalg.solve(linear, (joints.double() - shift[:, None, :]).transpose(1, 2)).transpose(1, 2)
        assert torch.allclose(back[visible > 0], stored[visible > 0], atol=1e-2)
        targets, weights, joints_hm = make_targets(batch, COCO, CODEC)
        peaks = targets.flatten(2).argmax(-1)
        px, py = peaks % 48, peaks // 48
        on_map = (
            (weights > 0)
            & (joints_hm[..., 0] >= 0)
            & (joints_hm[..., 0] <= 47)
            & (joints_hm[..., 1] >= 0)
            & (joints_hm[..., 1] <= 63)
        )
        assert ((px - joints_hm[..., 0]).abs()[on_map] <= 0.5 + 1e-4).all()
        assert ((py - joints_hm[..., 1]).abs()[on_map] <= 0.5 + 1e-4).all()
        assert 0.0 < batch["flip"].mean() < 1.0 or batch["flip"].numel() < 4


def test_sharding_across_ranks_covers_every_sample_once_with_equal_steps(coco_shards):
    config = LoaderConfig(batch_size=4, workers=1, augment=AugmentConfig(enabled=False))
    twin_config = replace(config, workers=0)
    makers = (
        lambda r: DaliLoader(coco_shards, "val", config, rank=r, world_size=2),
        lambda r: torch_loader(coco_shards, "val", twin_config, rank=r, world_size=2)[0],
    )
    for make in makers:
        steps, seen = [], []
        for rank in (0, 1):
            batches = list(make(rank))
            steps.append(len(batches))
            seen += [i for b in batches for i, v in zip(b["ids"][:, 1].tolist(), b["valid"].tolist()) if v]
        assert steps[0] == steps[1] == 2  # 12 samples / 2 ranks / batch 4 -> 6 each -> 2 steps
        assert len(seen) == 12 and len(set(seen)) == 12


def test_dali_checkpoint_resumes_an_interrupted_epoch_on_the_same_samples_and_draws(coco_shards):
    config = LoaderConfig(batch_size=2, workers=1, seed=5)
    loader = DaliLoader(coco_shards, "val", config)
    it = iter(loader)
    next(it)
    next(it)
    state = loader.checkpoint()
    rest = list(it)  # the remaining 4 steps of the epoch
    resumed = list(DaliLoader(coco_shards, "val", config, checkpoint=state))
    assert len(rest) == len(resumed) == 4
    for a, b in zip(rest, resumed):
        assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["image"], b["image"])
        assert torch.equal(a["matrix"], b["matrix"]) and torch.equal(a["valid"], b["valid"])


def test_mpii_fixture_through_shards_and_dali(realdata, tmp_path):
    records, report = read_mpii(realdata / "mpii" / "test_mpii.json", realdata / "mpii")
    write_shards(records, MPII, tmp_path, "valid", ShardConfig(samples_per_shard=8, workers=1), report, False)
    fixed = FixedDraw(1.0, 20.0, True, 0)
    config = LoaderConfig(batch_size=5, workers=1, fixed=fixed, shuffle=False)
    batch = next(iter(DaliLoader(tmp_path, "valid", config)))
    _, weights, joints_hm = make_targets(batch, MPII, CODEC)
    codec = HeatmapCodec()
    for i, rec in enumerate(records):
        width = cv2.imread(str(rec.image_path)).shape[1]
        joints, vis = flip_joints(rec.joints, rec.visible, width, MPII.flip_pairs)
        center = rec.center.copy()
        center[0] = width - 1 - center[0]
        enc = codec.encode(joints, vis, center, rec.scale, 20.0)
        assert np.abs(joints_hm[i].numpy()[vis > 0] - enc["keypoints"][vis > 0]).max() < 1e-3
        assert np.array_equal(weights[i].numpy(), enc["keypoint_weights"])


@pytest.mark.parametrize(("before", "after", "global_batch", "resume_at"), [(2, 1, 4, 1), (1, 2, 4, 2), (3, 1, 6, 1)])
def test_the_twin_resumed_on_another_number_of_ranks_sees_the_same_global_batches(
    coco_shards, before, after, global_batch, resume_at
):
    """The twin's position is the global step: resumed on another number of ranks with the same global batch,
    every step is the same samples and every sample of the epoch is seen exactly once (12 samples here)."""
    from dataops.loaders import TwinLoader

    def batches(world: int, start: int) -> list[list[tuple[int, bool]]]:
        """Per global step from `start`: the (annotation id, valid) pairs of all ranks together."""
        config = LoaderConfig(
            input_size=(64, 48), batch_size=global_batch // world, workers=0, augment=AugmentConfig(enabled=False)
        )
        ranks = [TwinLoader(coco_shards, "val", config, rank, world) for rank in range(world)]
        for loader in ranks:
            loader.load_state_dict({"epoch": 3, "step": start})
            assert loader.global_batch == global_batch
        steps = [list(loader) for loader in ranks]
        return [
            sorted((i, bool(v)) for b in (s[step] for s in steps) for i, v in zip(b["ids"][:, 1].tolist(), b["valid"]))
            for step in range(len(steps[0]))
        ]

    straight = batches(before, 0)
    resumed = batches(before, 0)[:resume_at] + batches(after, resume_at)
    assert resumed == straight
    seen = [i for step in resumed for i, valid in step if valid]
    assert len(seen) == len(set(seen)) == 12
