"""Shards that changed after they were written never train silently: verification against the manifest (cached
by size and mtime) names the tar and says to re-shard; a bad index or a 0-byte tar gets the same answer at open
from both loaders; a mismatched index, a NaN member or an undecodable JPEG is an error naming the tar and sample
in either loader; non-finite numbers are never written."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from dataops.augment import AugmentConfig
from dataops.datasets import read_coco_keypoints
from dataops.loaders import LoaderConfig, TwinLoader
from dataops.loaders.dali_loader import DaliLoader
from dataops.loaders.shard_index import read_index
from dataops.shards import ShardConfig, ShardError, verify_shards, write_shards

CONFIG = LoaderConfig(input_size=(64, 48), batch_size=4, workers=0, augment=AugmentConfig(enabled=False), shuffle=False)
LOADERS = {
    "twin": lambda d: TwinLoader(d, "val", CONFIG),
    "dali": lambda d: DaliLoader(d, "val", dataclasses.replace(CONFIG, workers=1)),
}


@pytest.fixture(scope="module")
def written(realdata, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fault_shards")
    records, report, kset = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    for split in ("train", "val"):
        write_shards(records, kset, out, split, ShardConfig(samples_per_shard=6, workers=1), report, progress=False)
    return out


@pytest.fixture
def shards(written, tmp_path, monkeypatch) -> Path:
    """A copy to damage, with a verification cache of its own."""
    monkeypatch.setenv("TRANSPOSE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "shards"
    shutil.copytree(written, out)
    return out


def member(shards: Path, ext: str, sample: int = 1, tar: str = "val-00000.tar") -> tuple[Path, int, int]:
    location = read_index(shards / tar)[sample]
    return shards / tar, *location.members[ext]


def overwrite(path: Path, offset: int, payload: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(payload)] = payload
    path.write_bytes(bytes(data))


def read_all(loader) -> list:
    return [b for b in loader]


def test_verification_passes_clean_shards_and_a_restart_hashes_nothing(shards):
    first = verify_shards(shards, "val")
    assert sorted(first.hashed) == sorted(first.checked) and len(first.checked) == 4  # 2 tars + 2 indexes
    assert verify_shards(shards, "val").hashed == []  # cached by size and mtime
    tar, offset, size = member(shards, "jpg")
    overwrite(tar, offset + size // 2, bytes([tar.read_bytes()[offset + size // 2] ^ 0x10]))  # same size
    with pytest.raises(ShardError, match=r"val-00000\.tar does not match its sha256 .* re-shard the 'val' split"):
        verify_shards(shards, "val")


def test_a_flipped_byte_in_a_jpeg_stops_training_naming_the_tar(shards, tmp_path):
    from training_runs import run, write_params

    tar, offset, size = member(shards, "jpg", tar="train-00001.tar")
    overwrite(tar, offset + size - 100, b"\x00\x13\x37")
    output = run(write_params(tmp_path, shards, "run", batch=4, epochs=1), processes=1, expect_failure=True)
    assert "train-00001.tar does not match its sha256" in output and "re-shard the 'train' split" in output


def test_swapped_index_offsets_are_caught_by_verification_and_by_the_twin(shards):
    index = shards / "val-00000.idx"
    lines = index.read_text().splitlines()
    first, second = lines[1].split(), lines[2].split()
    first[1:3], second[1:3] = second[1:3], first[1:3]  # the two samples' jpg members swapped
    lines[1], lines[2] = " ".join(first), " ".join(second)
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(ShardError, match=r"val-00000\.idx does not match its sha256"):
        verify_shards(shards, "val")
    with pytest.raises(ShardError, match=r"the index points its 'jpg' .* at the tar member .* does not match the tar"):
        read_all(LOADERS["twin"](shards))


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "val-00001.tar").write_bytes(b""), r"val-00001\.tar is empty \(0 bytes\): re-shard"),
        (
            lambda d: (d / "val-00001.idx").write_text((d / "val-00001.idx").read_text().replace("v1.2 6", "v1.2 7")),
            r"val-00001\.idx announces 7 samples and lists 6",
        ),
        (
            lambda d: (d / "val-00001.idx").write_text("v1.2 1\njpg 512 x val_1.jpg\n"),
            r"val-00001\.idx line 2: invalid literal",
        ),
        (lambda d: (d / "val-00001.idx").write_bytes(b"\xff\xfe\x00garbage"), r"val-00001\.idx"),
    ],
    ids=["0-byte tar", "miscounted index", "garbage index line", "binary index"],
)
def test_a_bad_index_or_an_empty_tar_gets_the_same_answer_from_both_loaders(shards, loader, damage, message):
    damage(shards)
    with pytest.raises(ShardError, match=message):
        LOADERS[loader](shards)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_nan_in_a_stored_number_is_an_error_naming_the_sample(shards, loader):
    tar, offset, _ = member(shards, "kpt.f32", sample=2)
    overwrite(tar, offset, np.float32(np.nan).tobytes())
    with pytest.raises(ShardError, match="holds NaN or inf"):
        read_all(LOADERS[loader](shards))


def test_an_undecodable_jpeg_in_dali_names_the_tar_and_the_sample(shards):
    tar, offset, size = member(shards, "jpg", sample=3, tar="val-00001.tar")
    overwrite(tar, offset, b"\x00" * size)
    key = read_index(tar)[3].key
    with pytest.raises(ShardError, match=rf"DALI failed .*val-00001\.tar: sample {key} holds an undecodable JPEG"):
        read_all(LOADERS["dali"](shards))


def test_non_finite_numbers_are_never_written(realdata, tmp_path):
    records, report, kset = read_coco_keypoints(realdata / "coco" / "test_coco.json", realdata / "coco")
    joints = records[0].joints.copy()
    joints[3, 0] = np.nan
    records[0] = dataclasses.replace(records[0], joints=joints)
    manifest = write_shards(records, kset, tmp_path, "val", ShardConfig(workers=1), report, progress=False)
    assert manifest["samples"] == len(records) - 1
    assert manifest["skipped"]["by_reason"]["non-finite numbers"] == 1
