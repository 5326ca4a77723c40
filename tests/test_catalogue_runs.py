"""Catalogue of lost-data faults (issue 11): run folders, checkpoints, dataset folders and outputs.

Every refusal case builds its situation in tmp_path, runs the CLI and checks exit code 2, one line on stderr
that names the culprit, no traceback, and that nothing the user had changed. Cases that must succeed (a stale
lock, a corrupt newest checkpoint, leftovers of interrupted writes) check what was kept, replaced and said.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from causaldiffae import CausalDiffAE
from causaldiffae.data.base import DATASET_MARKER, write_dataset
from causaldiffae.graph import CausalGraph
from causaldiffae.knobs import Knobs, write_knobs
from causaldiffae.training import checkpoint, load_run_config, run_folder, train
from causaldiffae.training.run_folder import LOCK_NAME
from conftest import TINY_CONFIG, exit_code

STEPS = ["train.max_steps=2", "train.checkpoint_every=1", "train.log_every=1", "train.grid_images=2",
         "train.grid_steps=2"]


def _train_argv(run: Path, data_overrides: list[str], *extra: str, sets: tuple[str, ...] = ()) -> list[str]:
    argv = ["train", str(TINY_CONFIG), "--out", str(run)]
    for item in [*data_overrides, *STEPS, *sets]:
        argv += ["--set", item]
    return [*argv, *extra]


def _snapshot(*roots: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``roots``: content hash (or 'dir') and mode."""
    seen: dict[str, tuple[str, int]] = {}
    for root in roots:
        if not root.exists():
            seen[str(root)] = ("absent", 0)
            continue
        for path in [root, *sorted(root.rglob("*"))]:
            kind = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            seen[str(path)] = (kind, stat.S_IMODE(path.lstat().st_mode))
    return seen


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("causaldiffae: error: "), err
    return lines[0]


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("causaldiffae: warning:")]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _lock(run: Path, pid: int, host: str | None = None) -> None:
    record = {"pid": pid, "host": host or socket.gethostname(), "started": "2024-01-01 00:00:00", "token": "x"}
    (run / LOCK_NAME).write_text(json.dumps(record) + "\n")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, data_overrides: list[str]) -> Path:
    """A finished tiny run: 2 steps, checkpoints step-00000001 and step-00000002."""
    run = tmp_path_factory.mktemp("catalogue") / "run"
    train(load_run_config(TINY_CONFIG, [*data_overrides, *STEPS]), run, progress=False)
    assert [p.name for p in checkpoint.checkpoints(run)] == ["step-00000002", "step-00000001"]
    return run


# -- the catalogue of refusals ------------------------------------------------------------------------------
# Each case: (name, build(tmp, finished, data_overrides) -> (argv, folders that must not change), culprit).


def _copy(tmp: Path, finished: Path) -> Path:
    run = tmp / "run"
    shutil.copytree(finished, run)
    return run


def _locked_by_live_process(tmp, finished, data):
    run = _copy(tmp, finished)
    _lock(run, os.getpid())
    return _train_argv(run, data, "--resume", sets=("train.max_steps=3",)), [run], f"process {os.getpid()}"


def _locked_on_another_host(tmp, finished, data):
    run = _copy(tmp, finished)
    _lock(run, 1, host="elsewhere.example")
    return _train_argv(run, data, "--resume"), [run], "elsewhere.example"


def _new_run_into_finished_model(tmp, finished, data):
    model = tmp / "model"
    model.mkdir()
    for name in ["model.safetensors", "model_config.json", "metrics.csv", "config.yaml"]:
        shutil.copy(finished / name, model / name)
    return _train_argv(model, data), [model], "--overwrite"


def _new_run_into_user_folder(tmp, finished, data):
    folder = tmp / "mine"
    (folder / "checkpoints" / "step-backup").mkdir(parents=True)
    (folder / "checkpoints" / "step-backup" / "notes.txt").write_text("mine")
    return _train_argv(folder, data), [folder], "checkpoints"


def _new_run_into_run_with_checkpoints(tmp, finished, data):
    run = _copy(tmp, finished)
    return _train_argv(run, data), [run], "--resume"


def _out_is_a_file(tmp, finished, data):
    path = tmp / "notes.txt"
    path.write_text("mine")
    return _train_argv(path, data), [tmp], "not a folder"


def _resume_nothing(tmp, finished, data):
    return _train_argv(tmp / "nothing", data, "--resume"), [tmp / "nothing"], "no checkpoint"


def _resume_user_folder(tmp, finished, data):
    folder = tmp / "mine"
    (folder / "checkpoints" / "step-backup").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    return _train_argv(folder, data, "--resume"), [folder], "not a training run"


def _resume_with_changed_config(tmp, finished, data):
    run = _copy(tmp, finished)
    return _train_argv(run, data, "--resume", sets=("train.lr=0.001",)), [run], "train.lr 0.0002 -> 0.001"


def _resume_with_changed_model(tmp, finished, data):
    run = _copy(tmp, finished)
    return _train_argv(run, data, "--resume", sets=("model.latent_dim=8",)), [run], "model.latent_dim 4 -> 8"


def _allow_config_change_without_resume(tmp, finished, data):
    return _train_argv(tmp / "new", data, "--allow-config-change"), [tmp / "new"], "--allow-config-change"


def _state_not_a_mapping(tmp, finished, data):
    run = _copy(tmp, finished)
    for ckpt in checkpoint.checkpoints(run):
        (ckpt / "state.json").write_text("[1, 2]")
    return _train_argv(run, data, "--resume", sets=("train.max_steps=3",)), [run], \
        "corrupt checkpoint step-00000002"


def _state_without_step(tmp, finished, data):
    run = _copy(tmp, finished)
    for ckpt in checkpoint.checkpoints(run):
        meta = json.loads((ckpt / "state.json").read_text())
        del meta["step"]
        (ckpt / "state.json").write_text(json.dumps(meta))
    return _train_argv(run, data, "--resume", sets=("train.max_steps=3",)), [run], "no integer step"


def _data_into_user_folder(dataset: str) -> Callable:
    def build(tmp, finished, data):
        folder = tmp / "mine"
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
        return ["data", dataset, "--out", str(folder)], [folder], "notes.txt"
    return build


def _counterfactual_out_json(tmp, finished, data):
    run = _copy(tmp, finished)
    return ["counterfactual", str(run), "--do", "angle=10", "--out", str(tmp / "res.json")], [tmp], "one file"


def _counterfactual_out_model_config(tmp, finished, data):
    run = _copy(tmp, finished)
    return ["counterfactual", str(run), "--do", "angle=10", "--out", str(run / "model_config.png")], [tmp], \
        "model_config.json"


def _counterfactual_out_is_input(tmp, finished, data):
    run = _copy(tmp, finished)
    image = tmp / "x.png"
    image.write_bytes(b"not read")
    return ["counterfactual", str(run), "--do", "angle=10", "--image", str(image), "--out", str(image)], [tmp], \
        "--image"


def _sample_out_weights(tmp, finished, data):
    run = _copy(tmp, finished)
    return ["sample", str(run), "--out", str(run / "model.safetensors")], [tmp], "model.safetensors"


def _sample_out_checkpoint(tmp, finished, data):
    run = _copy(tmp, finished)
    return ["sample", str(run), "--out", str(run / "checkpoints" / "step-00000002" / "x.png")], [tmp], \
        "file of the model"


def _evaluate_out_checkpoints(tmp, finished, data):
    run = _copy(tmp, finished)
    return ["evaluate", str(run), "--predictors", str(tmp / "none"), "--out", str(run / "checkpoints")], [tmp], \
        "file of the model"


def _tune_out_checkpoint(tmp, finished, data):
    run = _copy(tmp, finished)
    return ["tune", str(run), "--out", str(run / "checkpoints" / "step-00000002")], [tmp], "file of the model"


REFUSALS = {
    "lock held by a live process": _locked_by_live_process,
    "lock held on another host": _locked_on_another_host,
    "new run into a finished model": _new_run_into_finished_model,
    "new run into a user folder (checkpoints/step-backup)": _new_run_into_user_folder,
    "new run into a run with checkpoints": _new_run_into_run_with_checkpoints,
    "--out is a file": _out_is_a_file,
    "--resume where nothing is": _resume_nothing,
    "--resume a user folder": _resume_user_folder,
    "--resume with a changed train.lr": _resume_with_changed_config,
    "--resume with a changed model": _resume_with_changed_model,
    "--allow-config-change without --resume": _allow_config_change_without_resume,
    "state.json not a mapping": _state_not_a_mapping,
    "state.json without step": _state_without_step,
    "data pendulum into a user folder": _data_into_user_folder("pendulum"),
    "data morphomnist into a user folder": _data_into_user_folder("morphomnist"),
    "counterfactual --out res.json": _counterfactual_out_json,
    "counterfactual --out RUN/model_config.png": _counterfactual_out_model_config,
    "counterfactual --out an input image": _counterfactual_out_is_input,
    "sample --out RUN/model.safetensors": _sample_out_weights,
    "sample --out into a checkpoint": _sample_out_checkpoint,
    "evaluate --out RUN/checkpoints": _evaluate_out_checkpoints,
    "tune --out into a checkpoint": _tune_out_checkpoint,
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_by_name_and_nothing_changes(case, tmp_path, finished, data_overrides, capsys):
    argv, kept, culprit = REFUSALS[case](tmp_path, finished, data_overrides)
    before = _snapshot(*kept)
    assert exit_code(argv) == 2
    line = _one_line(capsys)
    assert culprit in line, line
    assert _snapshot(*kept) == before


# -- faults that are handled ------------------------------------------------------------------------------


def test_stale_lock_is_reported_and_taken_over(tmp_path, finished, data_overrides, capsys):
    run = _copy(tmp_path, finished)
    dead = _dead_pid()
    _lock(run, dead)
    train(load_run_config(TINY_CONFIG, [*data_overrides, *STEPS, "train.max_steps=3"]), run, resume=True,
          progress=False)
    (warning,) = _warnings(capsys.readouterr().err)
    assert f"process {dead}" in warning and "no longer running" in warning
    assert not (run / LOCK_NAME).exists()  # released at the end
    assert checkpoint.latest(run).name == "step-00000003"


def test_lock_of_a_reused_pid_is_stale_and_a_held_lock_is_exclusive(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _lock(run, os.getpid())
    record = json.loads((run / LOCK_NAME).read_text())
    (run / LOCK_NAME).write_text(json.dumps({**record, "process_start": "1"}))  # this pid, another process
    said: list[str] = []
    with run_folder.lock(run, said.append):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(run_folder.RunInUse, match=f"process {os.getpid()}"), run_folder.lock(run, said.append):
            pass
        assert (run / LOCK_NAME).is_file()  # the refused second holder leaves the lock alone
    assert len(said) == 1 and "no longer running" in said[0]
    assert list(run.iterdir()) == []


def test_lock_is_released_when_training_fails(tmp_path, data_overrides):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="resize"):  # fails after the lock was taken
        train(load_run_config(TINY_CONFIG, [*data_overrides, "data.image_size=32"]), run, progress=False)
    assert not run.exists()  # the folder made for the lock is gone again, lock and all
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(ValueError, match="resize"):
        train(load_run_config(TINY_CONFIG, [*data_overrides, "data.image_size=32"]), kept, progress=False)
    assert list(kept.iterdir()) == []


def test_a_second_process_is_refused_while_one_trains(tmp_path, data_overrides, capsys):
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "causaldiffae.cli",
            *_train_argv(run, data_overrides, sets=("train.max_steps=100000", "train.checkpoint_every=0"))]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()
        before = _snapshot(run / "config.yaml")
        assert exit_code(_train_argv(run, data_overrides, "--overwrite")) == 2
        line = _one_line(capsys)
        assert f"process {proc.pid}" in line and "in use" in line
        assert _snapshot(run / "config.yaml") == before
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert not (run / LOCK_NAME).exists()


def test_corrupt_newest_checkpoint_falls_back_to_an_intact_one(tmp_path, finished, data_overrides, capsys):
    run = _copy(tmp_path, finished)
    (run / "checkpoints" / "step-00000002" / "model.safetensors").write_bytes(b"\0garbage" * 10)
    argv = _train_argv(run, data_overrides, "--resume")
    assert exit_code(argv) == 0
    (warning,) = _warnings(capsys.readouterr().err)
    assert "corrupt checkpoint step-00000002" in warning and "step-00000001" in warning
    # step 2 was trained again from step 1: the same weights as the uninterrupted run
    redone, original = (load_file(str(r / "checkpoints" / "step-00000002" / "ema.safetensors"))
                        for r in (run, finished))
    assert all(torch.allclose(redone[k], original[k], atol=1e-6) for k in original)


def test_leftovers_of_interrupted_writes_are_removed_at_the_next_start(tmp_path, finished, data_overrides):
    run = _copy(tmp_path, finished)
    leftovers = [run / ".model.safetensors.ab12cd_3.tmp", run / ".metrics.csv.zzzzzzzz.tmp",
                 run / "samples" / ".step-00000002-samples.png.k0k0k0k0.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    (run / "checkpoints" / ".step-00000003.q1w2e3r4.tmp").mkdir()
    (run / "checkpoints" / ".step-00000003.q1w2e3r4.tmp" / "model.safetensors").write_bytes(b"half")
    mine = [run / ".notes.txt.abcdefgh.tmp", run / "checkpoints" / "step-backup", run / "notes.txt"]
    mine[0].write_text("mine")
    shutil.copytree(run / "checkpoints" / "step-00000001", mine[1])
    mine[2].write_text("mine")
    before = _snapshot(*mine)
    train(load_run_config(TINY_CONFIG, [*data_overrides, *STEPS, "train.max_steps=4"]), run, resume=True,
          progress=False)
    assert not any(p.exists() for p in leftovers)
    assert not (run / "checkpoints" / ".step-00000003.q1w2e3r4.tmp").exists()
    assert _snapshot(*mine) == before  # not the run's names: never read, rotated or removed
    assert [p.name for p in checkpoint.checkpoints(run)] == ["step-00000004", "step-00000003"]


def test_overwrite_replaces_the_run_files_and_keeps_the_users(tmp_path, finished, data_overrides, capsys):
    """--overwrite means a new model: everything that described the earlier one goes (its tuned knobs, which the new
    model would otherwise run at, its README, reports written beside it); the user's other files stay, and one
    line names them."""
    run = _copy(tmp_path, finished)
    (run / "checkpoints" / "step-00000009").mkdir()  # a stale checkpoint of the earlier run: replaced too
    (run / "notes.txt").write_text("mine")
    (run / "eval").mkdir()
    write_knobs(run, Knobs(0.2, 3.0, 7, "tune on the earlier model"))
    (run / "README.md").write_text("# The earlier model\n")
    (run / "tune.md").write_text("the earlier model's tuning\n")
    assert CausalDiffAE.from_pretrained(run).knobs.steps == 7
    assert exit_code(_train_argv(run, data_overrides, "--overwrite", sets=("train.max_steps=1",))) == 0
    assert (run / "notes.txt").read_text() == "mine" and (run / "eval").is_dir()
    assert not any((run / name).exists() for name in ("knobs.json", "README.md", "tune.md"))
    assert CausalDiffAE.from_pretrained(run).knobs == Knobs()
    assert [p.name for p in checkpoint.checkpoints(run)] == ["step-00000001"]
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()] == ["step", "1"]
    assert json.loads((run / "mechanisms.json").read_text())  # the new run's fit
    (kept,) = _warnings(capsys.readouterr().err)
    assert "kept 2" in kept and "eval/, notes.txt" in kept


def test_a_run_that_stopped_before_its_first_checkpoint_starts_again(tmp_path, finished, data_overrides, capsys):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "checkpoints" / ".step-00000001.a1b2c3d4.tmp").mkdir(parents=True)  # killed inside the first write
    for name in ["config.yaml", "metrics.csv", "mechanisms.json", "samples/step-00000005-samples.png"]:
        shutil.copy(finished / name.replace("00000005", "00000002"), run / name)
    _lock(run, _dead_pid())
    train(load_run_config(TINY_CONFIG, [*data_overrides, *STEPS, "train.max_steps=1"]), run, progress=False)
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 2 and "no longer running" in warnings[0] and "starting it again" in warnings[1]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-00000001-reconstruction.png",
                                                                   "step-00000001-samples.png"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]


# -- a full disk: one line naming the file, exit 2, the last checkpoint intact ----------------------------------

ENOSPC = OSError(errno.ENOSPC, "No space left on device")  # as a write or close raises it: no file named
#: safetensors' own error for it, whose text alone holds the OS error (0.5 on; and as older releases wrote it)
SAFETENSORS_ENOSPC = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
SAFETENSORS_OLD_ENOSPC = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                         'message: "No space left on device" })')
FULL_DISK = {  # writer (module, attribute), the error, which write fails (the path holds it), the path named
    "checkpoint-weights": ("causaldiffae.training.checkpoint", "save_file", SAFETENSORS_ENOSPC, "step-00000002",
                           "checkpoints/step-00000002"),
    "checkpoint-state": ("pathlib", "Path.write_text", ENOSPC, "step-00000002", "checkpoints/step-00000002"),
    "exported-model": ("causaldiffae.model", "save_file", SAFETENSORS_OLD_ENOSPC, "model.safetensors",
                       "model.safetensors"),
    "grid": ("PIL.Image", "Image.save", ENOSPC, "step-00000002-samples", "samples/step-00000002-samples.png"),
    "report": ("pathlib", "Path.write_text", ENOSPC, "mechanisms.json", "mechanisms.json"),
}


@pytest.mark.parametrize("case", FULL_DISK)
def test_a_full_disk_is_one_line_naming_the_file(case, tmp_path, data_overrides, monkeypatch, capsys):
    """Whatever the write a full disk stops (checkpoint, exported model, grid, report; an OSError without a file,
    or safetensors' own error), the run ends with one line (after its progress) naming the file or checkpoint it
    could not write, exit 2; no temporary file or lock stays, and the run resumes from its last complete
    checkpoint. The second export fails (the model of the first stays loadable)."""
    import importlib

    module, attribute, error, where, named = FULL_DISK[case]
    owner = importlib.import_module(module)
    *outer, name = attribute.split(".")
    for part in outer:
        owner = getattr(owner, part)
    write, calls = getattr(owner, name), []

    def full(*args, **kwargs):
        if any(isinstance(a, str | os.PathLike) and where in os.fspath(a) for a in args):
            calls.append(args)
            if case != "exported-model" or len(calls) == 2:
                raise error
        return write(*args, **kwargs)

    monkeypatch.setattr(owner, name, full)
    run = tmp_path / "run"
    assert exit_code(_train_argv(run, data_overrides)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("causaldiffae: error:") == 1, err
    assert err.splitlines()[-1] == f"causaldiffae: error: No space left on device: {run / named}"
    monkeypatch.undo()
    assert [p.name for p in run.rglob(".*")] == [] and not (run / LOCK_NAME).exists()
    if case != "report":  # that one fails before the first step, with nothing to resume
        assert checkpoint.latest(run).name == ("step-00000001" if case.startswith("checkpoint") else "step-00000002")
        assert CausalDiffAE.from_pretrained(run) is not None
        train(load_run_config(TINY_CONFIG, [*data_overrides, *STEPS]), run, resume=True, progress=False)
        assert checkpoint.latest(run).name == "step-00000002"
        ema = load_file(str(run / "checkpoints" / "step-00000002" / "ema.safetensors"))
        exported = CausalDiffAE.from_pretrained(run).state_dict()  # the model of step 2, also if its export failed
        assert all(torch.equal(exported[k], ema[k]) for k in ema)


@pytest.mark.parametrize("output", ["png", "json"])
def test_a_full_disk_under_a_command_output_is_one_line(output, tmp_path, finished, monkeypatch, capsys):
    """Outside training too (here a counterfactual's grid and its JSON report): one line naming the output, exit 2,
    no temporary file."""
    import PIL.Image

    owner, name = (PIL.Image.Image, "save") if output == "png" else (Path, "write_text")
    write = getattr(owner, name)

    def full(self, *args, **kwargs):
        if ".cf." in os.fspath(self if output == "json" else args[0]):
            raise ENOSPC
        return write(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, full)
    out = tmp_path / "out" / "cf.png"
    argv = ["counterfactual", str(finished), "--do", "angle=10", "--index", "0", "--steps", "2", "--out", str(out)]
    assert exit_code(argv) == 2
    assert _one_line(capsys) == f"causaldiffae: error: No space left on device: {out.with_suffix('.' + output)}"
    assert [p.name for p in out.parent.iterdir()] == (["cf.png"] if output == "json" else [])


def test_resume_may_change_the_budget_or_anything_when_told(tmp_path, finished, data_overrides):
    run = _copy(tmp_path, finished)
    train(load_run_config(TINY_CONFIG, [*data_overrides, *STEPS, "train.max_steps=3", "train.log_every=3"]), run,
          resume=True, progress=False)
    config = [*data_overrides, *STEPS, "train.max_steps=4", "train.lr=0.001"]
    train(load_run_config(TINY_CONFIG, config), run, resume=True, allow_config_change=True, progress=False)
    assert "lr: 0.001" in (run / "config.yaml").read_text()
    assert checkpoint.latest(run).name == "step-00000004"


def test_models_and_checkpoints_are_readable_by_others(finished):
    files = [finished / "model.safetensors", finished / "model_config.json",
             *(finished / "checkpoints" / "step-00000002").iterdir()]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o644)}
    folder = finished / "checkpoints" / "step-00000002"
    assert oct(stat.S_IMODE(folder.stat().st_mode)) == oct(0o755)
    out = finished.parent / "exported"
    CausalDiffAE.from_pretrained(finished).save_pretrained(out)
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()} == {oct(0o644)}


def test_only_checkpoint_names_count(tmp_path):
    run = tmp_path / "run"
    for name in ["step-backup", "step-00000002-old", "step-0003", "step-00000005", "step-100000000"]:
        (run / "checkpoints" / name).mkdir(parents=True)
    (run / "checkpoints" / "step-00000007").write_text("a file")
    assert [p.name for p in checkpoint.checkpoints(run)] == ["step-100000000", "step-00000005"]
    with pytest.raises(ValueError, match="not a checkpoint"):
        checkpoint.step_of(run / "checkpoints" / "step-backup")


def test_datasets_replace_only_their_own_folder(tmp_path):
    graph = CausalGraph.from_dict({"variables": ["a", "b"], "edges": [["a", "b"]]})
    rows = [{"file": f"{i}.png", "split": "train", "a": float(i), "b": 1.0} for i in range(2)]
    images = [torch.zeros(8, 8, dtype=torch.uint8).numpy()] * 2
    out = write_dataset(tmp_path / "d", graph, rows, images)
    assert (out / DATASET_MARKER).is_file()
    (out / "stale.txt").write_text("from the first write")
    write_dataset(out, graph, rows[:1], images[:1])  # its own folder: replaced
    assert not (out / "stale.txt").exists() and len((out / "labels.csv").read_text().splitlines()) == 2
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "labels.csv").write_text("mine")
    with pytest.raises(ValueError, match="did not write it"):
        write_dataset(mine, graph, rows, images)
    assert [p.name for p in mine.iterdir()] == ["labels.csv"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_demo_resumes_only_from_a_checkpoint(tmp_path, finished, monkeypatch):
    """A demo killed during its first checkpoint write leaves an empty checkpoints/: it starts again, not resumes."""
    from causaldiffae import demo

    class Stop(Exception):
        pass

    resumed = []

    def fake_train(config, run, resume=False, **kwargs):
        resumed.append(resume)
        raise Stop

    monkeypatch.setattr(demo, "train", fake_train)
    (tmp_path / "empty" / "run" / "checkpoints").mkdir(parents=True)
    shutil.copytree(finished, tmp_path / "done" / "run")
    for out in (tmp_path / "empty", tmp_path / "done"):
        with pytest.raises(Stop):
            demo.run_demo(out, train_minutes=0.01)
    assert resumed == [False, True]
