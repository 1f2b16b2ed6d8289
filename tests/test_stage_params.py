"""Stage sections of params.yaml map onto the library's configs, and bad keys stop the stage naming them."""

from __future__ import annotations

import pytest

from dataops.augment import AugmentConfig
from dataops.synthetic import SyntheticConfig
from pipelines.make_synthetic import scene_overrides
from pipelines.train import augment_config, cpu_threads_per_process, run_fingerprint, train_config
from pipelines.tune import TuneSettings


def test_scene_overrides_build_a_synthetic_config():
    scene = {
        "person_height": [64, 400],
        "facing_weights": [0.75, 0.1, 0.15],
        "pose_weights": {"stand": 0.5, "walk": 0.5},
        "occluders_per_image": [0, 1],
    }
    config = SyntheticConfig(**scene_overrides(scene))
    assert config.person_height == (64, 400)
    assert config.pose_weights == (("stand", 0.5), ("walk", 0.5))
    assert config.occluders_per_image == (0, 1)
    with pytest.raises(SystemExit, match="synthetic.scene.person_heigth"):
        scene_overrides({"person_heigth": [1, 2]})
    with pytest.raises(SystemExit, match="synthetic.scene.seed"):  # counts and seed have their own keys
        scene_overrides({"seed": 3})


def test_augment_section():
    assert augment_config({}, training=True) == AugmentConfig()
    light = augment_config({"augment": {"scale_factor": 0.25, "half_body_prob": 0.0}}, training=True)
    assert (light.scale_factor, light.half_body_prob, light.rotation_factor) == (0.25, 0.0, 45.0)
    assert augment_config({"augment": {"scale_factor": 0.25}}, training=False) == AugmentConfig(enabled=False)
    with pytest.raises(SystemExit, match="STAGE.augment.scale"):
        augment_config({"augment": {"scale": 0.3}}, training=True)
    # a stored region is a disc around the largest crop: any rotation fits, a larger scale or shift does not
    assert augment_config({"augment": {"rotation_factor": 60}}, training=True).rotation_factor == 60
    with pytest.raises(SystemExit, match="STAGE.augment scale_factor above .*scale_factor 0.35"):
        augment_config({"augment": {"scale_factor": 0.4}}, training=True)
    with pytest.raises(SystemExit, match="shift_factor above .*shift_factor 0.0.*shard.max_shift"):
        augment_config({"augment": {"shift_factor": 0.1}}, training=True)
    wide = AugmentConfig(shift_factor=0.16)
    assert augment_config({"augment": {"shift_factor": 0.16}}, training=True, reach=wide).shift_factor == 0.16
    assert augment_config({"augment": {"shift_factor": 0.1, "shift_prob": 0.0}}, training=True).max_shift == 0.0
    assert augment_config({"augment": {"scale_factor": 0.5}}, training=True, reach=None).scale_factor == 0.5


def test_train_and_tune_sections_name_unknown_keys():
    assert train_config({"train": {"epochs": 3, "lr": 0.01}}, "pretrain").epochs == 3
    with pytest.raises(SystemExit, match=r"pretrain\.train\.epoch\b"):
        train_config({"train": {"epoch": 3}}, "pretrain")
    with pytest.raises(SystemExit, match=r"tune\.trails"):
        TuneSettings.from_section({"space": {"train.lr": {"choice": [0.1]}}, "trails": 2})
    with pytest.raises(SystemExit, match=r"tune\.scheduler\.grace"):
        TuneSettings.from_section({"space": {"train.lr": {"choice": [0.1]}}, "scheduler": {"grace": 1}})


def test_cpu_threads_are_shared_out_among_local_processes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpu_threads_per_process() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads_per_process() == 3


def test_a_run_on_other_data_or_other_starting_weights_is_not_resumed(tmp_path):
    """The checkpoint fingerprint: a stage that DVC reruns because its shards or its pretrained model changed
    must start afresh, while what does not change the result (workers, where metrics go) keeps resuming."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for split in ("train", "valid"):
        (shards / f"{split}-manifest.json").write_text('{"samples": 10}')
    init = tmp_path / "best.pth"
    init.write_bytes(b"pretrained")
    section = {"model": "transpose_r_tiny", "shards": str(shards), "init_from": str(init), "workers": 2}
    first = run_fingerprint(section, "valid")
    assert run_fingerprint({**section, "workers": 1, "metrics": "m.json"}, "valid") == first
    init.write_bytes(b"pretrained again")
    second = run_fingerprint(section, "valid")
    (shards / "valid-manifest.json").write_text('{"samples": 11}')
    third = run_fingerprint(section, "valid")
    assert len({first, second, third}) == 3
