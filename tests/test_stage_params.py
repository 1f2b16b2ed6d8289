"""Stage sections of params.yaml map onto the library's configs, and every bad key, value or file stops the stage
before any work, naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dataops.augment import AugmentConfig
from dataops.datasets import read_coco_keypoints
from dataops.shards import ShardConfig, write_shards
from mlops.tuning import TuneSettings
from pipelines.data import DataSection
from pipelines.evaluate import EvaluateSection
from pipelines.evaluate import check as check_evaluation
from pipelines.make_synthetic import SyntheticSection
from pipelines.params import ParamsError, load_params, parse_section
from pipelines.shard_data import ShardSection, dataset_sources
from pipelines.train import TrainSection, augment_config, cpu_threads_per_process, plan, run_identity
from transpose.keypoints import COCO, MPII
from transpose.models import ModelCard

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coco_shards(realdata, tmp_path_factory) -> Path:
    """train and val splits of the real COCO fixtures, cut for 128x96 crops."""
    out = tmp_path_factory.mktemp("params_shards")
    ann = realdata / "coco" / "test_coco.json"
    records, report, kset = read_coco_keypoints(ann, realdata / "coco")
    config = ShardConfig(samples_per_shard=12, workers=1)
    write_shards(records, kset, out, "train", config, report, progress=False)
    write_shards(records, kset, out, "val", config, report, progress=False, ground_truth=ann)
    return out


def section(shards: Path, tmp_path: Path, **changes) -> dict:
    values = {"model": "transpose_r_tiny", "image_size": [128, 96], "shards": str(shards), "out_dir": str(tmp_path)}
    return {**values, **changes}


def test_the_projects_params_file_parses_into_every_stage_section():
    params = load_params(REPO / "params.yaml")
    for stage in ("pretrain", "transfer", "mpii_scratch"):
        assert parse_section(TrainSection, params[stage], stage).train.epochs >= 1
    for stage in ("evaluate_coco", "evaluate_mpii"):
        assert parse_section(EvaluateSection, params[stage], stage).runs
    assert parse_section(ShardSection, params["shard"], "shard").aspect_ratio == 0.75
    assert parse_section(DataSection, params["data"], "data").source == "synthetic"
    assert parse_section(SyntheticSection, params["synthetic"], "synthetic").config().person_height == (64, 400)
    assert parse_section(TuneSettings, params["tune"], "tune").scheduler.type == "asha"
    # the input size is stated once: pretrain's; transfer and mpii_scratch take it from its model card
    assert "image_size" not in params["transfer"] and "image_size" not in params["mpii_scratch"]


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (TrainSection, {"shards": "s", "out_dir": "o", "train": {"epoch": 3}}, r"pretrain\.train\.epoch\b.*known"),
        (TrainSection, {"shards": "s", "out_dir": "o", "batchsize": 3}, r"unknown key\(s\) pretrain\.batchsize"),
        (TrainSection, {"shards": "s"}, r"missing key\(s\) pretrain\.out_dir"),
        (TrainSection, {"shards": "s", "out_dir": "o", "loader": "dal"}, r"'pretrain\.loader' must be one of 'dali'"),
        (TrainSection, {"shards": "s", "out_dir": "o", "batch_size": "16"}, r"'pretrain\.batch_size' must be an int"),
        (TrainSection, {"shards": "s", "out_dir": "o", "batch_size": 0}, r"'pretrain\.batch_size' must be at least 1"),
        (
            TrainSection,
            {"shards": "s", "out_dir": "o", "image_size": [128]},
            r"pretrain\.image_size' must be a list of 2",
        ),
        (TrainSection, {"shards": "s", "out_dir": "o", "model": "transpose_x"}, r"pretrain\.model' unknown model"),
        (TrainSection, {"shards": "s", "out_dir": "o", "train": {"lr": -1}}, r"'pretrain\.train\.lr' must be positive"),
        (TrainSection, {"shards": "s", "out_dir": "o", "train": {"epochs": 2.5}}, r"train\.epochs' must be an integer"),
        (
            TrainSection,
            {"shards": "s", "out_dir": "o", "validate": "yes"},
            r"'pretrain\.validate' must be true or false",
        ),
        (ShardSection, {"store": "images"}, r"'pretrain\.store' must be one of 'region', 'image'"),
        (ShardSection, {"jpeg_quality": 101}, r"'pretrain\.jpeg_quality' must be in \[1, 100\]"),
        (TuneSettings, {"space": {"train.lr": {"choice": [0.1]}}, "trails": 2}, r"pretrain\.trails"),
        (TuneSettings, {"space": {"train.lr": {"choice": [0.1]}}, "scheduler": {"grace": 1}}, r"scheduler\.grace"),
        (TuneSettings, {"space": {"train.lr": {"pick": [0.1]}}}, r"'pretrain\.space' entry 'train\.lr' must be"),
        (TuneSettings, {"space": {"lr": {"choice": [1]}}, "scheduler": {"type": "hb"}}, r"scheduler\.type' must be"),
    ],
)
def test_bad_keys_and_values_name_the_key(cls, values, message):
    with pytest.raises(ParamsError, match=message):
        parse_section(cls, values, "pretrain")


def test_scene_values_are_checked_as_the_generator_types_them():
    scene = {"person_height": [64, 400], "pose_weights": {"stand": 0.5, "walk": 0.5}, "occluders_per_image": [0, 1]}
    config = SyntheticSection(scene=scene).config()
    assert config.person_height == (64, 400) and config.occluders_per_image == (0, 1)
    assert config.pose_weights == (("stand", 0.5), ("walk", 0.5))
    with pytest.raises(ParamsError, match=r"synthetic\.scene\.person_heigth"):
        SyntheticSection(scene={"person_heigth": [1, 2]}).config()
    with pytest.raises(ParamsError, match=r"synthetic\.scene\.seed"):  # counts and seed have their own keys
        SyntheticSection(scene={"seed": 3}).config()
    with pytest.raises(ParamsError, match=r"'synthetic\.scene\.truncation' must be a number"):
        SyntheticSection(scene={"truncation": "a lot"}).config()


def test_a_dataset_kind_typo_and_missing_files_stop_the_shard_stage(tmp_path):
    val = {"annotations": "a.json", "images": "img"}
    typo = DataSection(source="real", datasets={"mine": {"kind": "cocoo", "train": val, "val": val}})
    with pytest.raises(SystemExit, match=r"data\.datasets\.mine\.kind must be one of coco, mpii, got 'cocoo'"):
        dataset_sources(typo)
    mpii = DataSection(
        source="real", datasets={"mpii": {"kind": "mpii", "root": str(tmp_path), "train": val, "val": val}}
    )
    with pytest.raises(SystemExit, match=r"missing data\.datasets\.mpii\.val\.ground_truth"):
        dataset_sources(mpii)
    unknown = DataSection(source="real", datasets={"c": {"kind": "coco", "train": {**val, "imgs": "x"}, "val": val}})
    with pytest.raises(SystemExit, match=r"unknown key\(s\) data\.datasets\.c\.train\.imgs"):
        dataset_sources(unknown)
    from pipelines.shard_data import check_sources

    sources = dataset_sources(DataSection(source="real", datasets={"c": {"kind": "coco", "root": str(tmp_path),
                                                                         "train": val, "val": val}}))  # fmt: skip
    with pytest.raises(SystemExit, match=r"c\.train\.annotations: .*a\.json is not a file"):
        check_sources(sources)


def test_augment_section_stays_within_what_the_shards_store():
    reach = AugmentConfig()
    assert augment_config({}, "pretrain", reach) == AugmentConfig()
    light = augment_config({"scale_factor": 0.25, "half_body_prob": 0.0}, "pretrain", reach)
    assert (light.scale_factor, light.half_body_prob, light.rotation_factor) == (0.25, 0.0, 45.0)
    with pytest.raises(ParamsError, match=r"pretrain\.augment\.scale\b"):
        augment_config({"scale": 0.3}, "pretrain", reach)
    with pytest.raises(ParamsError, match=r"pretrain\.augment\.enabled"):  # not a training knob
        augment_config({"enabled": False}, "pretrain", reach)
    with pytest.raises(ParamsError, match=r"'pretrain\.augment\.flip_prob' must be in \[0, 1\]"):
        augment_config({"flip_prob": 1.5}, "pretrain", reach)
    # a stored region is a disc around the largest crop: any rotation fits, a larger scale or shift does not
    assert augment_config({"rotation_factor": 60}, "pretrain", reach).rotation_factor == 60
    with pytest.raises(ParamsError, match=r"pretrain\.augment scale_factor above .*scale_factor 0.35"):
        augment_config({"scale_factor": 0.4}, "pretrain", reach)
    with pytest.raises(ParamsError, match=r"shift_factor above .*shift_factor 0.0.*shard\.max_shift"):
        augment_config({"shift_factor": 0.1}, "pretrain", reach)
    wide = AugmentConfig(shift_factor=0.16)
    assert augment_config({"shift_factor": 0.16}, "pretrain", wide).shift_factor == 0.16
    assert augment_config({"shift_factor": 0.1, "shift_prob": 0.0}, "pretrain", reach).max_shift == 0.0
    assert augment_config({"scale_factor": 0.5}, "pretrain", None).scale_factor == 0.5  # whole images


def test_the_plan_reads_what_the_model_is_from_the_data_and_the_starting_run(coco_shards, tmp_path):
    p = plan(parse_section(TrainSection, section(coco_shards, tmp_path / "a"), "pretrain"), "pretrain")
    assert p.card.keypoints.names == COCO.names and p.card.keypoints.sigmas == COCO.sigmas
    assert p.card.dataset_kind == "coco" and p.gate_metric == "AP"
    assert p.val_data.ground_truth.name == "val-ground_truth.json" and p.val_data.ground_truth.is_file()
    # shards cut for 0.75 crops and a 1:1 input: an error naming both
    with pytest.raises(ParamsError, match=r"pretrain\.image_size: image_size \[128, 128\].*aspect ratio 0\.75"):
        plan(parse_section(TrainSection, section(coco_shards, tmp_path, image_size=[128, 128]), "pretrain"), "pretrain")
    with pytest.raises(ParamsError, match=r"pretrain\.shards: no shard manifest .*valid-manifest\.json"):
        plan(parse_section(TrainSection, section(coco_shards, tmp_path, val_split="valid"), "pretrain"), "pretrain")
    # a run to start from: its card gives the architecture and size; a section that contradicts it is refused
    run = tmp_path / "run"
    ModelCard("transpose_r_tiny", (128, 96), MPII, "mpii", {"num_layers": 2}).write(run / "model.json")
    torch.save({}, run / "best.pth")
    moved = {"init_from": str(run), "model": None, "image_size": None}
    p = plan(parse_section(TrainSection, section(coco_shards, tmp_path / "b", **moved), "transfer"), "transfer")
    assert (p.card.model, p.card.image_size, p.card.model_args) == ("transpose_r_tiny", (128, 96), {"num_layers": 2})
    assert p.card.keypoints.names == COCO.names  # the data's keypoints, not the starting run's: a new head
    contradicting = {**moved, "image_size": [256, 192]}
    with pytest.raises(ParamsError, match=r"'transfer\.image_size' is \(256, 192\) but the model card of .* says"):
        plan(parse_section(TrainSection, section(coco_shards, tmp_path, **contradicting), "transfer"), "transfer")
    with pytest.raises(ParamsError, match=r"missing key\(s\) pretrain\.model, pretrain\.image_size"):
        plan(
            parse_section(TrainSection, section(coco_shards, tmp_path, model=None, image_size=None), "pretrain"),
            "pretrain",
        )


def test_the_run_fingerprint_covers_what_changes_the_result(coco_shards, tmp_path):
    """A run is resumed only by a run of the same section, data, starting weights and code; where its outputs
    go, and how many workers load its data, do not change its result."""
    values = section(coco_shards, tmp_path / "a")
    first = run_identity(plan(parse_section(TrainSection, values, "pretrain"), "pretrain"))
    same = {**values, "workers": 1, "metrics": "m.json", "out_dir": str(tmp_path / "elsewhere")}
    assert run_identity(plan(parse_section(TrainSection, same, "pretrain"), "pretrain")) == first
    more = run_identity(plan(parse_section(TrainSection, {**values, "processes": 2}, "pretrain"), "pretrain"))
    assert more["section"] != first["section"]  # another global batch: another result
    changed = run_identity(plan(parse_section(TrainSection, {**values, "batch_size": 8}, "pretrain"), "pretrain"))
    assert changed["section"] != first["section"] and changed["code"] == first["code"]
    assert set(first) >= {"section", "card", "data", "code", "environment", "deepspeed_config"}
    assert first["environment"]["torch"] == torch.__version__.split("+")[0] or "torch" in first["environment"]


def test_an_evaluation_refuses_a_run_of_other_keypoints(coco_shards, tmp_path):
    run = tmp_path / "mpii_run"
    ModelCard("transpose_r_tiny", (128, 96), MPII, "mpii").write(run / "model.json")
    values = {"runs": {"mine": str(run)}, "shards": str(coco_shards), "split": "val", "out_dir": str(tmp_path),
              "metrics": str(tmp_path / "m.json")}  # fmt: skip
    with pytest.raises(ParamsError, match=r"runs\.mine .*keypoints of 'mpii' \(16\) but .* holds 'person' \(17\)"):
        check_evaluation(parse_section(EvaluateSection, values, "evaluate_coco"), "evaluate_coco")
    json.loads((coco_shards / "val-manifest.json").read_text())  # untouched


def test_cpu_threads_are_shared_out_among_local_processes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpu_threads_per_process() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads_per_process() == 3
