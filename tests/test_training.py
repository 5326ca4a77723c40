"""The training loop end to end on the tiny config and 48 images: outputs, resume, normalisation."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from causaldiffae import CausalDiffAE
from causaldiffae.data import load_dataset, pendulum
from causaldiffae.model import load_config
from causaldiffae.training import load_run_config, train
from causaldiffae.training.loop import _prepare_data
from conftest import TINY_CONFIG, poll_while, slowed

SHORT = ["train.max_steps=6", "train.checkpoint_every=3", "train.log_every=1"]
COMPARED = ["loss", "mse", "kl", "label", "gamma", "lr"]  # metrics columns that do not depend on wall time


def _config(data_overrides: list[str], *extra: str):
    return load_run_config(TINY_CONFIG, [*data_overrides, *SHORT, *extra])


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(scope="module", autouse=True)
def _decoded_once(tiny_dataset):
    """Every run here reads the decoded-image cache, so that all of them see the same image tensors
    (a first, decoding load gives images of another memory layout: see test_first_and_second_run_agree)."""
    load_dataset(tiny_dataset, 16)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, data_overrides) -> Path:
    """Six uninterrupted steps, checkpoints at 3 and 6."""
    out = tmp_path_factory.mktemp("train") / "run-a"
    assert train(_config(data_overrides), out, progress=False) == out
    return out


@pytest.fixture(scope="module")
def run_b(tmp_path_factory, data_overrides) -> Path:
    """Three steps, then resumed to six."""
    out = tmp_path_factory.mktemp("train") / "run-b"
    train(_config(data_overrides, "train.max_steps=3"), out, progress=False)
    train(_config(data_overrides), out, resume=True, progress=False)
    return out


# -- outputs of a run -----------------------------------------------------------------------------------


def test_mixed_precision_auto_trains_in_fp32_where_bf16_is_emulated(run_a, tmp_path, data_overrides, monkeypatch,
                                                                   capsys):
    monkeypatch.setattr("causaldiffae.precision.native_bf16", lambda cpuinfo=None: False)
    out = train(_config(data_overrides, "train.mixed_precision=auto", "train.cpu=true"), tmp_path / "auto",
                progress=False)
    assert "mixed precision auto: no (bf16 is not native on this CPU)" in capsys.readouterr().err
    got, want = _metrics(out), _metrics(run_a)
    assert [[r[k] for k in COMPARED] for r in got] == [[r[k] for k in COMPARED] for r in want]


def test_metrics_are_finite_and_follow_the_schedules(run_a):
    rows = _metrics(run_a)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        for key in ["loss", "mse", "kl", "label"]:
            assert math.isfinite(float(row[key])), row
    tc = load_run_config(TINY_CONFIG).train
    for step, row in enumerate(rows):  # step before the update: gamma and lr of that update
        assert float(row["gamma"]) == pytest.approx(tc.gamma_max * min(1, step / tc.gamma_warmup_steps))
        assert float(row["lr"]) == pytest.approx(tc.lr * min(1, (step + 1) / tc.lr_warmup_steps))
    assert float(rows[0]["loss"]) == pytest.approx(float(rows[0]["mse"]))  # gamma = 0 at step 0


def test_weights_change_during_training(run_a, data_overrides):
    step3 = _weights(run_a / "checkpoints" / "step-00000003" / "model.safetensors")
    step6 = _weights(run_a / "checkpoints" / "step-00000006" / "model.safetensors")
    torch.manual_seed(load_run_config(TINY_CONFIG).train.seed)
    init = CausalDiffAE(load_config(run_a)).state_dict()
    assert step6.keys() == init.keys()
    keys = ["encoder.head.weight", "unet.head.2.weight", "causal_layer.mechanisms.shadow_length.0.weight"]
    for key in keys:
        assert not torch.equal(step6[key], init[key]), key
        assert not torch.equal(step6[key], step3[key]), key
    changed = [k for k in init if not torch.equal(step6[k], init[k])]
    assert len(changed) > 0.9 * (len(init) - 1)  # everything but the (unused) null condition


def test_init_from_starts_at_the_folder_s_weights(run_a, tmp_path, data_overrides):
    """Fine-tuning: with a vanishing learning rate, one step leaves the weights where the folder had them (its
    exported EMA model), to float precision; a loss-only key (p_uncond) may differ. Without init_from they differ."""
    source = _weights(run_a / "model.safetensors")
    tuned = tmp_path / "tuned"
    extra = ["train.max_steps=1", "train.lr=1e-30", "train.seed=5", "model.p_uncond=0.5"]
    train(_config(data_overrides, *extra, f"train.init_from={run_a}"), tuned, progress=False)
    fresh = tmp_path / "fresh"
    train(_config(data_overrides, *extra), fresh, progress=False)
    step1 = _weights(tuned / "checkpoints" / "step-00000001" / "model.safetensors")
    scratch = _weights(fresh / "checkpoints" / "step-00000001" / "model.safetensors")
    image_model = [k for k in source if not k.startswith("causal_layer.labels.")]  # the mechanisms are fit again
    assert all(torch.allclose(step1[k], source[k], atol=1e-6) for k in image_model)
    assert not all(torch.allclose(scratch[k], source[k], atol=1e-6) for k in image_model)
    assert load_config(tuned).p_uncond == 0.5
    assert yaml.safe_load((tuned / "config.yaml").read_text())["train"]["init_from"] == str(run_a)


def test_freeze_keeps_the_unet_as_it_was_and_trains_the_encoder(run_a, tmp_path, data_overrides):
    """train.freeze=[unet] with init_from: the UNet and its null condition come out bit for bit as the folder had
    them (trained weights and EMA alike), while the encoder moves."""
    source = _weights(run_a / "model.safetensors")
    out = tmp_path / "enc"
    train(_config(data_overrides, "train.max_steps=2", "train.lr=1e-2", f"train.init_from={run_a}",
                  "train.freeze=[unet]"), out, progress=False)
    for weights in (_weights(out / "checkpoints" / "step-00000002" / "model.safetensors"),
                    _weights(out / "model.safetensors")):
        frozen = [k for k in source if k.startswith("unet.") or k == "null_cond"]
        assert len(frozen) > 10 and all(torch.equal(weights[k], source[k]) for k in frozen)
        assert not torch.equal(weights["encoder.head.weight"], source["encoder.head.weight"])


def test_init_from_another_architecture_is_refused_naming_the_key(run_a, tmp_path, data_overrides):
    with pytest.raises(ValueError, match=r"model\.unet_channels: 8 there, 16 here"):
        train(_config(data_overrides, "model.unet_channels=16", f"train.init_from={run_a}"), tmp_path / "x",
              progress=False)
    with pytest.raises(FileNotFoundError, match="not a causaldiffae model"):
        train(_config(data_overrides, f"train.init_from={tmp_path}"), tmp_path / "y", progress=False)


def test_run_folder_layout(run_a):
    names = {p.name for p in run_a.iterdir()}
    assert {"config.yaml", "metrics.csv", "model.safetensors", "model_config.json", "samples",
            "checkpoints"} <= names
    assert not list(run_a.rglob("*.pt")) and not list(run_a.rglob("*.pkl")) and not list(run_a.rglob("*.bin"))
    assert sorted(p.name for p in (run_a / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    for ckpt in (run_a / "checkpoints").iterdir():
        assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "ema.safetensors",
                                                    "optimizer.safetensors", "state.json"}


def test_no_temporary_files_remain(run_a, run_b):
    for run in (run_a, run_b):
        leftovers = [p for p in run.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
        assert leftovers == []


def test_sample_grids_are_pngs(run_a):
    grids = sorted((run_a / "samples").glob("*.png"))
    assert [p.name for p in grids] == ["step-00000006-reconstruction.png", "step-00000006-samples.png"]
    for path in grids:
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert img.width > 4 * 16 and img.height > 2 * 16  # 4 images per row, 2 rows


def test_resolved_config_has_the_graph_inline(run_a, tiny_dataset):
    resolved = yaml.safe_load((run_a / "config.yaml").read_text())
    assert resolved["graph"]["variables"] == pendulum.GRAPH["variables"]
    assert resolved["graph"]["edges"] == pendulum.GRAPH["edges"]
    assert all("normalization" in v for v in resolved["graph"]["variables"])
    assert resolved["data"]["root"] == str(tiny_dataset)
    assert resolved["train"]["max_steps"] == 6
    assert resolved["model"]["latent_dim"] == 4
    # a resolved config is itself a valid run config (to re-run or resume the run)
    again = load_run_config(run_a / "config.yaml")
    assert again.graph == resolved["graph"]
    assert again.train == load_run_config(TINY_CONFIG, SHORT).train


def test_exported_model_loads_and_is_the_ema(run_a):
    model = CausalDiffAE.from_pretrained(run_a)
    assert model.config.image_size == 16 and model.config.channels == 3
    assert model.graph.variables == list(pendulum.VARIABLES)
    ema = _weights(run_a / "checkpoints" / "step-00000006" / "ema.safetensors")
    raw = _weights(run_a / "checkpoints" / "step-00000006" / "model.safetensors")
    exported = model.state_dict()
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    assert any(not torch.equal(exported[k], raw[k]) for k in raw)
    with torch.no_grad():
        lat = model.encode(torch.rand(2, 3, 16, 16))
        z = model.intervene(lat, {"angle": 10.0})
    assert torch.isfinite(z).all()


def _fingerprint(state: dict[str, torch.Tensor]) -> float:
    return sum(float(state[k].double().sum()) for k in sorted(state))


def test_a_run_folder_read_while_it_trains_holds_a_whole_model_or_none(tmp_path, data_overrides, monkeypatch):
    """from_pretrained, called over and over while a run exports its model at every step, gives one of the
    exported models (config and weights of one export) or says there is none yet; no read fails once a model file
    is there. The model's writes start late, so that reads land in the middle of them."""
    from causaldiffae import model as model_module

    monkeypatch.setattr(model_module, "save_file", slowed(model_module.save_file, 0.1))
    monkeypatch.setattr(model_module, "write_text", slowed(model_module.write_text, 0.1))
    out = tmp_path / "run"

    def read() -> float | None:
        present = (out / "model.safetensors").exists() or (out / "model_config.json").exists()
        try:
            return _fingerprint(CausalDiffAE.from_pretrained(out).state_dict())
        except FileNotFoundError:
            if present:
                raise
            return None

    config = _config(data_overrides, "train.max_steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=4")
    results = poll_while(read, lambda: train(config, out, progress=False))
    assert [r for r in results if isinstance(r, Exception)] == []
    exported = {_fingerprint(_weights(p / "ema.safetensors")) for p in (out / "checkpoints").iterdir()}
    loaded = {r for r in results if isinstance(r, float)}
    assert len(exported) == 4 and loaded and loaded <= exported


# -- resume ----------------------------------------------------------------------------------------------


def test_resume_reproduces_the_uninterrupted_run(run_a, run_b):
    rows_a, rows_b = _metrics(run_a), _metrics(run_b)
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in COMPARED:
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-5, abs=1e-7), (ra["step"], key)
    for name in ["checkpoints/step-00000006/model.safetensors", "checkpoints/step-00000006/ema.safetensors",
                 "model.safetensors"]:
        wa, wb = _weights(run_a / name), _weights(run_b / name)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.allclose(wa[key], wb[key], atol=1e-6), (name, key)


def test_compiled_unet_trains_the_same_model(run_a, tmp_path, data_overrides):
    """train.compile compiles the UNet in place: the same losses step by step as the eager run, and weights under
    the same names (a checkpoint or exported model of a compiled run loads anywhere)."""
    run = tmp_path / "compiled"
    train(_config(data_overrides, "train.compile=true"), run, progress=False)
    for ra, rb in zip(_metrics(run_a), _metrics(run), strict=True):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-4), ra["step"]
    for name in ["checkpoints/step-00000006/model.safetensors", "model.safetensors"]:
        eager, compiled = _weights(run_a / name), _weights(run / name)
        assert compiled.keys() == eager.keys()
        for key in eager:
            assert torch.allclose(compiled[key], eager[key], atol=1e-4), (name, key)


def test_training_into_a_run_with_checkpoints_needs_resume(run_a, data_overrides):
    before = (run_a / "metrics.csv").read_bytes()
    with pytest.raises(ValueError, match="resume"):
        train(_config(data_overrides), run_a, progress=False)
    assert (run_a / "metrics.csv").read_bytes() == before


def test_resume_drops_metrics_logged_after_the_checkpoint(run_a, tmp_path, data_overrides):
    """A run killed after step 5 resumes from step 3; metrics.csv must not list steps 4 and 5 twice."""
    run = tmp_path / "killed"
    shutil.copytree(run_a, run)
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    rows = _metrics(run)
    with (run / "metrics.csv").open("w", newline="") as fh:  # as if killed after logging step 5
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:5])
    train(_config(data_overrides), run, resume=True, progress=False)
    resumed = _metrics(run)
    assert [int(r["step"]) for r in resumed] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(_metrics(run_a), resumed, strict=True):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-5)


def test_first_and_second_run_agree(tmp_path, tiny_dataset):
    root = tmp_path / "fresh"
    shutil.copytree(tiny_dataset, root, ignore=shutil.ignore_patterns("cache"))  # no decoded cache yet
    overrides = ["data.name=folder", f"data.root={root}", "train.max_steps=2", "train.log_every=1"]
    train(load_run_config(TINY_CONFIG, overrides), tmp_path / "first", progress=False)  # decodes the PNGs
    train(load_run_config(TINY_CONFIG, overrides), tmp_path / "second", progress=False)  # reads the cache
    first, second = _metrics(tmp_path / "first"), _metrics(tmp_path / "second")
    for ra, rb in zip(first, second, strict=True):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-5), ra["step"]


# -- graphs and datasets ---------------------------------------------------------------------------------


def test_missing_normalisation_is_computed_from_the_train_split(tmp_path, data_overrides, tiny_rows):
    graph = copy.deepcopy(pendulum.GRAPH)
    light = next(v for v in graph["variables"] if v["name"] == "light")
    del light["normalization"]
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(graph))
    out = tmp_path / "run"
    train(load_run_config(TINY_CONFIG, [*data_overrides, f"graph={path}", "train.max_steps=1"]), out,
          progress=False)

    values = np.array([r["light"] for r in tiny_rows if r["split"] == "train"])
    resolved = yaml.safe_load((out / "config.yaml").read_text())["graph"]
    norm = next(v for v in resolved["variables"] if v["name"] == "light")["normalization"]
    assert set(norm) == {"mean", "std"}
    assert norm["mean"] == pytest.approx(values.mean(), rel=1e-5)
    stds = [values.std(ddof=0), values.std(ddof=1)]
    assert any(norm["std"] == pytest.approx(s, rel=1e-4) for s in stds), (norm, stds)
    # the other variables keep the graph file's normalisation
    angle = next(v for v in resolved["variables"] if v["name"] == "angle")
    assert angle["normalization"] == {"mean": 1.8, "std": 37.8}
    # and the exported model uses the computed one
    model = CausalDiffAE.from_pretrained(out)
    assert model.graph["light"].normalization == pytest.approx(norm)


def test_label_fraction_hides_train_labels_before_normalising_and_is_recorded(tmp_path, data_overrides, tiny_rows):
    graph = copy.deepcopy(pendulum.GRAPH)
    angle = next(v for v in graph["variables"] if v["name"] == "angle")
    del angle["normalization"]  # computed from the train labels the run may see
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(graph))
    config = load_run_config(TINY_CONFIG, [*data_overrides, f"graph={path}", "data.label_fraction={angle: 0.25}",
                                           "train.max_steps=1"])
    _, _, train_set, grid_set, _ = _prepare_data(config)
    n = sum(r["split"] == "train" for r in tiny_rows)
    kept = (~train_set.labels.isnan()).sum(dim=0).tolist()
    assert kept == [max(1, round(0.25 * n)), n, n, n]
    assert not grid_set.labels.isnan().any()  # the grid's test images keep their labels
    out = tmp_path / "run"
    train(config, out, progress=False)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["data"]["label_fraction"] == {"angle": 0.25}
    visible = train_set.labels[:, 0][~train_set.labels[:, 0].isnan()]
    norm = next(v for v in resolved["graph"]["variables"] if v["name"] == "angle")["normalization"]
    assert norm["mean"] == pytest.approx(visible.mean().item(), rel=1e-5)


def test_graph_with_other_variables_is_rejected(tmp_path, data_overrides):
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump({"variables": ["light", "angle", "shadow_length", "shadow_position"]}))
    with pytest.raises(ValueError, match="order"):
        config = load_run_config(TINY_CONFIG, [*data_overrides, f"graph={path}"])
        train(config, tmp_path / "run", progress=False)


def test_wrong_image_size_is_reported_before_training(tmp_path, data_overrides):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="resize"):
        train(load_run_config(TINY_CONFIG, [*data_overrides, "data.image_size=32"]), out, progress=False)
    assert not (out / "checkpoints").exists()


def test_small_test_split_still_trains(tmp_path, tiny_dataset):
    root = tmp_path / "few-test"
    shutil.copytree(tiny_dataset, root, ignore=shutil.ignore_patterns("cache"))
    lines = (root / "labels.csv").read_text().splitlines()
    test_rows = [i for i, line in enumerate(lines) if ",test," in line]
    for i in test_rows[2:]:
        lines[i] = lines[i].replace(",test,", ",train,")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    train(load_run_config(TINY_CONFIG, ["data.name=folder", f"data.root={root}", "train.max_steps=1"]), out,
          progress=False)  # train.grid_images is 4, the test split has 2 images
    assert (out / "model.safetensors").is_file()


def test_too_many_grid_steps_is_reported_before_training(tmp_path, data_overrides):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="grid_steps"):
        config = load_run_config(TINY_CONFIG, [*data_overrides, "train.grid_steps=200", "train.max_steps=2"])
        train(config, out, progress=False)
    assert not (out / "checkpoints").exists()


def test_two_processes_train_one_run(tmp_path, data_overrides):
    """Data-parallel training on two CPU processes (torchrun + accelerate's MULTI_CPU): one metrics log,
    one set of checkpoints, every parameter synchronised (DDP refuses parameters that get no gradient)."""
    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "causaldiffae.cli", "train", str(TINY_CONFIG), "--out", str(out)]
    for item in [*data_overrides, "train.max_steps=4", "train.log_every=2", "train.checkpoint_every=2"]:
        argv += ["--set", item]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("trained model in") == 1
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    assert CausalDiffAE.from_pretrained(out).config.image_size == 16


def _train_process(out: Path, overrides: list[str], prelude: str = "") -> subprocess.Popen:
    """``causaldiffae train`` on the tiny config in a subprocess, after running ``prelude`` (Python) there."""
    argv = ["train", str(TINY_CONFIG), "--out", str(out)]
    for item in overrides:
        argv += ["--set", item]
    script = f"{prelude}\nimport sys\nfrom causaldiffae.cli import main\nsys.exit(main({argv!r}))\n"
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), proc.communicate()[1][-2000:] if proc.poll() is not None else f"no {path}"


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, data_overrides):
    """A first SIGTERM/SIGINT finishes the step, writes checkpoint, model and grids, and exits 0."""
    out = tmp_path / "run"
    proc = _train_process(out, [*data_overrides, "train.max_steps=100000", "train.log_every=1",
                                "train.checkpoint_every=0"])
    _wait_for(out / "metrics.csv", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "saving a checkpoint" in err
    ckpt = sorted((out / "checkpoints").glob("step-*"))
    assert len(ckpt) == 1 and int(ckpt[0].name.split("-")[1]) > 0
    assert CausalDiffAE.from_pretrained(out) is not None


#: Run in the training subprocess: the first safetensors write of the checkpoint of step 3 (the final save of a
#: three-step run) announces itself (a file SAVING beside the run) and takes two seconds, so that a signal lands
#: in the middle of that save.
SLOW_FINAL_SAVE = """
import pathlib, time
from causaldiffae.training import checkpoint
_save_file = checkpoint.save_file
def _slow_save_file(tensors, filename, *args, **kwargs):
    marker = pathlib.Path(filename).parents[3] / "SAVING"
    if "step-00000003" in filename and not marker.exists():
        marker.touch()
        time.sleep(2)
    return _save_file(tensors, filename, *args, **kwargs)
checkpoint.save_file = _slow_save_file
"""


@pytest.mark.parametrize("signals", [1, 2])
def test_a_signal_during_the_final_save(tmp_path, data_overrides, signals):
    """A finished run's final save (checkpoint and model) is not lost to a SIGTERM in its middle: one signal lets
    it finish (exit 0, the model of step 3 loads); a second stops at once but cleanly (exit 130, a message saying
    that the run resumes from its checkpoint of step 2, which it does). Either way no temporary folder and no
    train.lock stay behind."""
    out, overrides = tmp_path / "run", [*data_overrides, "train.max_steps=3", "train.checkpoint_every=2"]
    proc = _train_process(out, overrides, SLOW_FINAL_SAVE)
    _wait_for(tmp_path / "SAVING", proc)
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    _, err = proc.communicate(timeout=120)
    assert not (out / "train.lock").exists()
    assert [p.name for p in out.rglob(".*")] == []
    if signals == 1:
        assert proc.returncode == 0, err[-2000:]
        assert "finishing the final save" in err
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    else:
        assert proc.returncode == 130, err[-2000:]
        assert "the final save was interrupted" in err and "resumes from its checkpoint of step 2" in err
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
        train(load_run_config(TINY_CONFIG, overrides), out, resume=True, progress=False)
        assert (out / "checkpoints" / "step-00000003").is_dir()
    assert CausalDiffAE.from_pretrained(out) is not None


def test_checkpoints_keep_the_fp16_loss_scale(tmp_path):
    """An fp16 run's loss scaler (its scale after a backoff from 1024 to 256) is saved in state.json and restored by
    resume; a run without one writes no scaler section; a section that is not numbers is a corrupt checkpoint."""
    from torch.amp import GradScaler

    from causaldiffae.training import checkpoint

    model = torch.nn.Linear(2, 2)
    ema, optimizer = copy.deepcopy(model), torch.optim.AdamW(model.parameters())
    scaler = GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scale exists once a loss has been scaled
    scaler.update(new_scale=256.0)
    saved = checkpoint.save(tmp_path, 3, model, ema, optimizer, keep=2, scaler=scaler)
    assert json.loads((saved / "state.json").read_text())["scaler"]["scale"] == 256.0
    fresh = GradScaler("cpu", init_scale=1024.0)
    assert checkpoint.resume(tmp_path, model, ema, optimizer, scaler=fresh) == 3
    assert fresh.get_scale() == 256.0
    plain = checkpoint.save(tmp_path, 4, model, ema, optimizer, keep=2)
    assert "scaler" not in json.loads((plain / "state.json").read_text())
    state = json.loads((plain / "state.json").read_text())
    (plain / "state.json").write_text(json.dumps({**state, "scaler": {"scale": "big"}}))
    with pytest.raises(checkpoint.CorruptCheckpoint, match="scaler section"):
        checkpoint.load(plain, model, ema, optimizer)
