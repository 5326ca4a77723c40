"""Experiment tracking: a tiny run with train.log_with tensorboard, its event files read back against metrics.csv
and the grids; resume, evaluate's headline numbers and the errors of a bad or missing tracker."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from causaldiffae import tracking
from causaldiffae.data import load_dataset
from causaldiffae.metrics.predictors import Predictors, save_predictors
from causaldiffae.reproduce import headline
from causaldiffae.training import load_run_config, train
from causaldiffae.training.loop import METRICS
from conftest import TINY_CONFIG, TINY_SIZE, exit_code

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the optional extra: pip install 'causaldiffae[track]'")

TRACKED = ["train.max_steps=4", "train.log_every=1", "train.sample_every=2", "train.checkpoint_every=2",
           "train.log_with=tensorboard"]


def _events(folder: Path) -> event_accumulator.EventAccumulator:
    """Every scalar and image of a TensorBoard run folder, as TensorBoard shows them (purged steps hidden)."""
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _scalars(events: event_accumulator.EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _csv_columns(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as tag -> [(step, value)], each value as the float32 that an event file stores."""
    with (run / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {f"train/{k}": [(int(r["step"]), float(np.float32(r[k]))) for r in rows] for k in METRICS[1:]}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, data_overrides) -> Path:
    """Four steps logged to TensorBoard, grids and checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    train(load_run_config(TINY_CONFIG, [*data_overrides, *TRACKED]), out, progress=False)
    return out


def test_tensorboard_holds_every_metrics_csv_row(tracked):
    scalars = _scalars(_events(tracked / tracking.LOGS / "train"))
    columns = _csv_columns(tracked)
    assert set(scalars) == set(columns)  # the loss terms, gamma, learning rate, img/s, elapsed time
    assert columns["train/loss"][0][0] == 1 and len(columns["train/loss"]) == 4
    for tag, rows in columns.items():
        assert scalars[tag] == rows, tag  # the same steps and the very numbers of the file


def test_tensorboard_holds_the_grids_as_written(tracked):
    events = _events(tracked / tracking.LOGS / "train")
    assert set(events.Tags()["images"]) == {"grids/samples", "grids/reconstruction"}
    for kind in ("samples", "reconstruction"):
        logged = events.Images(f"grids/{kind}")
        assert [e.step for e in logged] == [2, 4]
        for event in logged:
            png = tracked / "samples" / f"step-{event.step:08d}-{kind}.png"
            shown = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
            np.testing.assert_array_equal(shown, np.asarray(Image.open(png).convert("RGB")))


def test_a_resumed_run_appends_without_repeating_steps(tracked, tmp_path, data_overrides):
    """Killed after logging step 4 but before its checkpoint: the resumed run starts from step 2, logs 3 to 6
    again into the same folder, and TensorBoard shows each step once, as metrics.csv does."""
    run = tmp_path / "killed"
    shutil.copytree(tracked, run)
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    train(load_run_config(TINY_CONFIG, [*data_overrides, *TRACKED, "train.max_steps=6"]), run, resume=True,
          progress=False)
    folder = run / tracking.LOGS / "train"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # appended: the first run's file is kept
    events = _events(folder)
    columns = _csv_columns(run)
    assert [step for step, _ in columns["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert _scalars(events) == columns
    assert [e.step for e in events.Images("grids/samples")] == [2, 4, 6]


def test_a_run_started_again_starts_a_new_log(tracked, tmp_path, data_overrides, capsys):
    """A run that stopped before its first checkpoint leaves its logs too; started again, it replaces them."""
    run = tmp_path / "again"
    shutil.copytree(tracked, run, ignore=shutil.ignore_patterns("checkpoints", "model*"))
    train(load_run_config(TINY_CONFIG, [*data_overrides, *TRACKED, "train.max_steps=2"]), run, progress=False)
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert len(list((run / tracking.LOGS / "train").glob("events.out.tfevents.*"))) == 1
    assert [s for s, _ in _scalars(_events(run / tracking.LOGS / "train"))["train/loss"]] == [1, 2]


def test_evaluate_logs_its_headline_numbers(tracked, tmp_path, tiny_dataset):
    judges = Predictors(load_dataset(tiny_dataset, TINY_SIZE).graph, TINY_SIZE, 3, width=4).eval()
    save_predictors(judges, tmp_path / "predictors")
    out = tmp_path / "report"
    assert exit_code(["evaluate", str(tracked), "--data", str(tiny_dataset), "--predictors",
                      str(tmp_path / "predictors"), "--out", str(out), "--n", "4", "--seeds", "0", "--steps", "2",
                      "--subset", "2", "--batch-size", "4", "--log-with", "tensorboard"]) == 0
    expected = headline(json.loads((out / "metrics.json").read_text()))
    assert "evaluate/FID" in expected and "evaluate/effectiveness (norm. MAE, intervened var.)" in expected
    logged = _scalars(_events(out / tracking.LOGS / "evaluate"))
    assert logged == {tag: [(4, float(np.float32(v)))] for tag, v in expected.items()}  # at the run's step


def test_logging_a_step_again_replaces_it(tmp_path):
    tracking.log_once(["tensorboard"], tmp_path, "evaluate", {"evaluate/FID": 3.0}, step=10)
    tracking.log_once(["tensorboard"], tmp_path, "evaluate", {"evaluate/FID": 2.0}, step=20)
    tracking.log_once(["tensorboard"], tmp_path, "evaluate", {"evaluate/FID": 1.5}, step=20)
    assert _scalars(_events(tmp_path / tracking.LOGS / "evaluate")) == {"evaluate/FID": [(10, 3.0), (20, 1.5)]}


def test_an_unknown_tracker_is_named_with_the_supported_ones(data_overrides):
    with pytest.raises(ValueError, match=r"train\.log_with: 'tensorbord' is not a tracker .*tensorboard.*wandb"):
        load_run_config(TINY_CONFIG, [*data_overrides, "train.log_with=tensorbord"])
    assert tracking.names("tensorboard, wandb", "k") == ["tensorboard", "wandb"]
    assert tracking.names(["wandb", "wandb"], "k") == ["wandb"]
    assert tracking.names(None, "k") == tracking.names("none", "k") == []


def test_a_missing_tracker_package_is_refused_before_any_work(tmp_path, data_overrides, monkeypatch, capsys):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ValueError, match=r"train\.log_with: tensorboard is not installed: pip install "
                                         r"'causaldiffae\[track\]'"):
        train(load_run_config(TINY_CONFIG, [*data_overrides, *TRACKED]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    assert exit_code(["evaluate", str(tmp_path / "run"), "--predictors", str(tmp_path), "--out",
                      str(tmp_path / "report"), "--log-with", "wandb"]) == 2
    assert "--log-with: wandb is not installed: pip install wandb" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_without_log_with_there_are_no_logs(tmp_path, data_overrides):
    run = train(load_run_config(TINY_CONFIG, [*data_overrides, "train.max_steps=2"]), tmp_path / "run",
                progress=False)
    assert (run / "metrics.csv").is_file() and not (run / tracking.LOGS).exists()
