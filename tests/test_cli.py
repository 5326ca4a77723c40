"""The command line: help texts, one-line user errors with exit code 2, training, and dataset generation."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from causaldiffae import CausalDiffAE, __version__, cli_commands
from causaldiffae.cli import build_parser, main
from conftest import TINY_CONFIG, exit_code


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("causaldiffae: error: "), err
    return lines[0]


def _train_args(out: Path, data_root: Path, *sets: str) -> list[str]:
    args = ["train", str(TINY_CONFIG), "--out", str(out), "--set", "data.name=folder",
            "--set", f"data.root={data_root}"]
    for s in sets:
        args += ["--set", s]
    return args


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_dataset) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(_train_args(out, tiny_dataset, "train.max_steps=2")) == 0
    return out


# -- help ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["--help"], ["train", "data"]),
    (["train", "--help"], ["--out", "--set", "--resume", "train.max_steps", "model.p_uncond", "data.root"]),
    (["data", "--help"], ["pendulum", "7,308"]),
    (["data", "pendulum", "--help"], ["--out", "--size", "Pendulum"]),
    (["reproduce", "--help"], ["--train-seeds", "seed-S", "--jobs", "depth 1.0"]),
])
def test_help_exits_zero(capsys, argv, words):
    assert exit_code(argv) == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out, word


def test_reproduce_takes_training_seeds():
    args = build_parser().parse_args(["reproduce", "pendulum", "--out", "x", "--train-seeds", "0, 1,2"])
    assert args.train_seeds == [0, 1, 2]
    assert build_parser().parse_args(["reproduce", "pendulum", "--out", "x"]).train_seeds is None


def test_version(capsys):
    assert exit_code(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "causaldiffae.cli", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "data" in result.stdout


def test_module_entry_point_user_error_exits_two(tmp_path):
    result = subprocess.run([sys.executable, "-m", "causaldiffae.cli", "train", str(tmp_path / "none.yaml"),
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("causaldiffae: error: ") and "none.yaml" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [[], ["train"], ["data"], ["frobnicate"], ["data", "pendulum", "--size", "0",
                                                                             "--out", "x"],
                                  ["reproduce", "pendulum", "--out", "x", "--train-seeds", "0,a"],
                                  ["reproduce", "pendulum", "--out", "x", "--train-seeds", "1,1"]])
def test_usage_errors_exit_two(capsys, argv):
    assert exit_code(argv) == 2
    assert "usage:" in capsys.readouterr().err


# -- user errors: one line, exit code 2 ---------------------------------------------------------------------


def test_missing_config_file(capsys, tmp_path):
    assert main(["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "missing.yaml" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_unknown_set_key(capsys, tmp_path, tiny_dataset):
    assert main(_train_args(tmp_path / "run", tiny_dataset, "train.nope=1")) == 2
    assert "train.nope" in _one_line_error(capsys)


def test_bad_set_value(capsys, tmp_path, tiny_dataset):
    assert main(_train_args(tmp_path / "run", tiny_dataset, "train.batch_size=abc")) == 2
    assert "train.batch_size" in _one_line_error(capsys)


def test_cyclic_graph(capsys, tmp_path, tiny_dataset):
    graph = tmp_path / "cyclic.yaml"
    graph.write_text(yaml.safe_dump({
        "variables": ["angle", "light", "shadow_length", "shadow_position"],
        "edges": [["angle", "shadow_length"], ["shadow_length", "shadow_position"],
                  ["shadow_position", "angle"]],
    }))
    assert main(_train_args(tmp_path / "run", tiny_dataset, f"graph={graph}")) == 2
    line = _one_line_error(capsys)
    assert "cycle" in line and "cyclic.yaml" in line
    assert "angle -> shadow_length -> shadow_position -> angle" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_labels_without_a_graph_column(capsys, tmp_path, tiny_dataset):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root, ignore=shutil.ignore_patterns("cache"))
    with (root / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with (root / "labels.csv").open("w", newline="") as fh:
        fields = [f for f in rows[0] if f != "shadow_position"]
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    assert main(_train_args(tmp_path / "run", root)) == 2
    line = _one_line_error(capsys)
    assert "shadow_position" in line and "labels.csv" in line


def test_missing_dataset_folder(capsys, tmp_path):
    assert main(_train_args(tmp_path / "run", tmp_path / "nodata")) == 2
    assert "nodata" in _one_line_error(capsys)


def test_invalid_yaml_config_is_one_line(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: [1, 2\n")
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "broken.yaml" in _one_line_error(capsys)


def test_debug_environment_shows_the_exception(monkeypatch, tmp_path):
    monkeypatch.setenv("CAUSALDIFFAE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run")])


# -- training -----------------------------------------------------------------------------------------


def test_train_writes_a_loadable_model(cli_run, capsys):
    assert (cli_run / "model.safetensors").is_file()
    assert (cli_run / "model_config.json").is_file()
    model = CausalDiffAE.from_pretrained(cli_run)
    assert model.config.image_size == 16


def test_train_into_existing_run_without_resume(capsys, cli_run, tiny_dataset):
    assert main(_train_args(cli_run, tiny_dataset, "train.max_steps=2")) == 2
    assert "--resume" in _one_line_error(capsys)


def test_resume_from_corrupt_checkpoint(capsys, tmp_path, cli_run, tiny_dataset):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert checkpoints
    for ckpt in checkpoints:
        (ckpt / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 20)
    assert main([*_train_args(run, tiny_dataset, "train.max_steps=4"), "--resume"]) == 2
    line = _one_line_error(capsys)
    assert "corrupt" in line and checkpoints[-1].name in line


def test_corrupt_checkpoint_error_names_the_file(capsys, tmp_path, cli_run, tiny_dataset):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    for ckpt in (run / "checkpoints").glob("step-*"):
        (ckpt / "ema.safetensors").write_bytes(b"\x00garbage, not safetensors" * 20)
    assert main([*_train_args(run, tiny_dataset, "train.max_steps=4"), "--resume"]) == 2
    assert "ema.safetensors" in _one_line_error(capsys)


# -- data ------------------------------------------------------------------------------------------------


def test_data_pendulum_writes_the_full_dataset_reproducibly(tmp_path, capsys):
    first, second = tmp_path / "p1", tmp_path / "p2"
    assert main(["data", "pendulum", "--out", str(first), "--size", "8"]) == 0
    assert main(["data", "pendulum", "--out", str(second), "--size", "8"]) == 0
    with (first / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 7308
    splits = [r["split"] for r in rows]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (4934, 548, 1826)
    assert len(list((first / "images").glob("*.png"))) == 7308
    assert (first / "labels.csv").read_bytes() == (second / "labels.csv").read_bytes()
    assert (first / "graph.yaml").read_bytes() == (second / "graph.yaml").read_bytes()
    for row in rows[:: 1500]:
        name = row["file"]
        assert (first / "images" / name).read_bytes() == (second / "images" / name).read_bytes(), name
    from PIL import Image

    with Image.open(first / "images" / rows[0]["file"]) as img:
        assert img.size == (8, 8)


def test_pendulum_generate_bad_size_leaves_nothing(tmp_path):
    from causaldiffae.data import pendulum

    out = tmp_path / "p"
    with pytest.raises(ValueError, match="size"):
        pendulum.generate(out, 7, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind either


def test_data_pendulum_small_size_is_a_one_line_error(capsys, tmp_path):
    assert exit_code(["data", "pendulum", "--out", str(tmp_path / "p"), "--size", "7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(("causaldiffae: error:", "usage:")), err
    assert "%|" not in err


@pytest.mark.parametrize("command, argv, expected", [
    ("train", ["train", "configs/tiny.yaml", "--out", "x"],
     "causaldiffae: interrupted (a training run continues with --resume)"),
    ("explore", ["explore", "x"], "causaldiffae: interrupted"),
])
def test_ctrl_c_says_resume_only_for_training(monkeypatch, capsys, command, argv, expected) -> None:
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_commands, command, interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err.strip() == expected
