"""The catalogue of bad inputs and faults (issue 11): each case builds its input in a temporary folder, runs the
command line (or the Python API) and checks the outcome: exit code 2 and one line on stderr that names the culprit,
no traceback, and nothing written or changed in the case's folder. Property-based tests cover the parsers that a
user feeds (``--do`` values and ranges, ``--set`` pairs).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from causaldiffae import CausalDiffAE, ModelConfig, counterfactual, memory
from causaldiffae.cli import MAX_SWEEP, describe, parse_do
from causaldiffae.data import pendulum
from causaldiffae.data.base import load_dataset, write_dataset
from causaldiffae.graph import CausalGraph
from causaldiffae.metrics import report
from causaldiffae.training.config import load_run_config
from conftest import TINY, TINY_CONFIG, TINY_SIZE, exit_code

pipeline = importlib.import_module("causaldiffae.counterfactual")  # the package exports the function of that name
GRAPH = CausalGraph.from_dict(pendulum.GRAPH)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _model(seed: int = 0) -> CausalDiffAE:
    """A tiny Pendulum model whose UNet predicts something (its zero-initialised head perturbed)."""
    torch.manual_seed(seed)
    model = CausalDiffAE(ModelConfig(graph=pendulum.GRAPH, image_size=TINY_SIZE, channels=3, **TINY)).eval()
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_dataset) -> dict[str, Path]:
    """Inputs the cases share (outside each case's folder): a model, one with NaN weights, and datasets whose
    graphs list the model's variables in another order or lack one."""
    root = tmp_path_factory.mktemp("catalogue-assets")
    _model().save_pretrained(root / "model")
    shutil.copytree(root / "model", root / "nan-model")
    weights = root / "nan-model" / "model.safetensors"
    state = load_file(weights)
    state[next(k for k in state if k.startswith("unet.") and k.endswith("weight"))].view(-1)[0] = float("nan")
    save_file(state, weights, metadata={"format": "causaldiffae"})
    data = load_dataset(tiny_dataset)
    rows = [{"file": f, "split": s, **dict(zip(GRAPH.variables, r.tolist(), strict=True))}
            for f, s, r in zip(data.files, data.splits, data.labels, strict=True)]
    images = [im.permute(1, 2, 0).numpy() for im in data.images]
    reordered = CausalGraph(tuple(reversed(GRAPH.nodes)), GRAPH.edges)
    write_dataset(root / "reordered", reordered, rows, images)
    lacking = CausalGraph(GRAPH.nodes[:3], tuple(e for e in GRAPH.edges if "shadow_position" not in e))
    write_dataset(root / "lacking", lacking, rows, images)
    unlabelled = [{**r, "split": "val", "shadow_length": math.nan} if i < 8 else r for i, r in enumerate(rows)]
    write_dataset(root / "val-unlabelled", GRAPH, unlabelled, images)  # no shadow_length label in val
    return {"model": root / "model", "nan-model": root / "nan-model", "data": tiny_dataset,
            "reordered": root / "reordered", "lacking": root / "lacking", "val-unlabelled": root / "val-unlabelled"}


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root with a hash of its content: what a failed command must leave as it was."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _one_line(capsys, *culprits: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("causaldiffae: error: "), err
    for culprit in culprits:
        assert culprit in lines[0], (culprit, lines[0])
    return lines[0]


def _refused(capsys, tmp_path: Path, argv: list[str], *culprits: str) -> str:
    """Run argv: exit 2, one line naming every culprit, the case's folder unchanged (no temporary file either)."""
    before = _snapshot(tmp_path)
    assert exit_code(argv) == 2
    line = _one_line(capsys, *culprits)
    assert _snapshot(tmp_path) == before
    return line


# -- the command line: bad inputs, file-system faults and requests too large for the memory ------------------


def _sample(a, out, *extra):
    return ["sample", str(a["model"]), "--n", "2", "--steps", "2", "--out", str(out), *extra]


def _cf(a, out, *extra, data="data"):
    return ["counterfactual", str(a["model"]), "--data", str(a[data]), "--index", "0:2", "--steps", "2",
            "--out", str(out), *extra]


def _folder(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


def _file(tmp: Path, name: str, text: str = "mine\n") -> Path:
    (tmp / name).write_text(text)
    return tmp / name


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels (its data holds far fewer)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _image_cf(a, t, image: Path):
    return ["counterfactual", str(a["model"]), "--image", str(image), "--steps", "2", "--out", str(t / "cf.png")]


CASES = {
    # file system: one line naming the path the user gave (never the temporary file of an atomic write)
    "out-is-a-folder": lambda t, a: (_sample(a, _folder(t, "grid.png")), ["grid.png", "folder"]),
    "out-under-a-file": lambda t, a: (_sample(a, _file(t, "plain") / "grid.png"), ["plain", "is a file"]),
    "cf-out-under-a-file": lambda t, a: (_cf(a, _file(t, "plain") / "cf.png", "--do", "angle=10"), ["plain"]),
    "image-is-a-folder": lambda t, a: (["counterfactual", str(a["model"]), "--image", str(_folder(t, "pic.png")),
                                        "--out", str(t / "cf.png")], ["pic.png"]),
    "config-is-a-folder": lambda t, a: (["train", str(_folder(t, "cfg.yaml")), "--out", str(t / "run")],
                                        ["cfg.yaml"]),
    # --image is read as a dataset's images are: header checked before decoding, errors naming the file
    "image-bomb-header": lambda t, a: (_image_cf(a, t, _png_header(t / "big.png", 8000, 8000)),
                                       ["big.png", "8000x8000"]),
    "image-not-an-image": lambda t, a: (_image_cf(a, t, _file(t, "pic.png")), ["pic.png", "not an image"]),
    # output folders: refused up front, before any work or progress bar
    "evaluate-out-under-a-file": lambda t, a: (["evaluate", str(a["model"]), "--data", str(a["data"]), "--predictors",
                                                str(t / "none"), "--out", str(_file(t, "plain") / "report")],
                                               ["plain", "is a file"]),
    "tune-out-is-a-file": lambda t, a: (["tune", str(a["model"]), "--data", str(a["data"]), "--out",
                                         str(_file(t, "plain"))], ["plain", "is a file"]),
    "predictors-out-under-a-file": lambda t, a: (["predictors", "train", str(a["data"]), "--steps", "1", "--out",
                                                  str(_file(t, "plain") / "p")], ["plain", "is a file"]),
    "data-pendulum-out-under-a-file": lambda t, a: (["data", "pendulum", "--size", "8", "--out",
                                                     str(_file(t, "plain") / "ds")], ["plain", "is a file"]),
    # tune: a variable with no labels in the chosen split, named with the split
    "tune-variable-unlabelled-in-split": lambda t, a: (["tune", str(a["model"]), "--data", str(a["val-unlabelled"]),
                                                        "--out", str(t / "tune"), "--n", "2", "--steps", "2",
                                                        "--depths", "1", "--guidance", "1"],
                                                       ["shadow_length", "'val'"]),
    # requests too large for the memory: refused up front with the estimate
    "sample-n-1e8": lambda t, a: (_sample(a, t / "s.png")[:2] + ["--n", "100000000", "--out", str(t / "s.png")],
                                  ["--n 100,000,000", "GiB"]),
    "sweep-of-a-billion": lambda t, a: (_cf(a, t / "cf.png", "--do", "angle=0:1:1000000000"),
                                        ["angle", "1,000,000,000", f"{MAX_SWEEP:,}"]),
    "train-batch-1e8": lambda t, a: (["train", str(TINY_CONFIG), "--out", str(t / "run"), "--set", "data.name=folder",
                                      "--set", f"data.root={a['data']}", "--set", "train.batch_size=100000000"],
                                     ["train.batch_size=100,000,000", "GiB"]),
    "set-batch-1e8-text": lambda t, a: (["train", str(TINY_CONFIG), "--out", str(t / "run"),
                                         "--set", "train.batch_size=1e8"], ["train.batch_size", "'1e8'"]),
    # non-finite values: refused by name
    "guidance-nan": lambda t, a: (_cf(a, t / "cf.png", "--do", "angle=10", "--guidance", "nan"),
                                  ["--guidance", "finite", "nan"]),
    "guidance-inf-sample": lambda t, a: (_sample(a, t / "s.png", "--guidance", "inf"), ["--guidance", "inf"]),
    "guidance-list-with-nan": lambda t, a: (_cf(a, t / "cf.png", "--guidance", "1,nan"), ["--guidance", "1,nan"]),
    "do-nan": lambda t, a: (_cf(a, t / "cf.png", "--do", "angle=nan"), ["angle", "finite"]),
    "do-inf-range": lambda t, a: (_cf(a, t / "cf.png", "--do", "angle=0:inf:3"), ["angle", "finite"]),
    "do-range-overflows": lambda t, a: (_cf(a, t / "cf.png", "--do", "angle=-1e308:1e308:3"), ["angle", "overflows"]),
    "do-count-not-integer": lambda t, a: (_cf(a, t / "cf.png", "--do", "angle=0:1:2.5"), ["angle", "count"]),
    "set-lr-nan": lambda t, a: (["train", str(TINY_CONFIG), "--out", str(t / "run"), "--set", "train.lr=.nan"],
                                ["train.lr", "finite"]),
    "set-max-minutes-inf": lambda t, a: (["train", str(TINY_CONFIG), "--out", str(t / "run"),
                                          "--set", "train.max_minutes=.inf"], ["train.max_minutes", "finite"]),
    "evaluate-guidance-nan": lambda t, a: (["evaluate", str(a["model"]), "--data", str(a["data"]), "--predictors",
                                            str(t / "none"), "--out", str(t / "report"), "--guidance", "nan"],
                                           ["--guidance", "finite"]),
    "tune-guidance-inf": lambda t, a: (["tune", str(a["model"]), "--data", str(a["data"]), "--out", str(t / "tune"),
                                        "--guidance", "1,inf"], ["--guidance", "finite"]),
    "model-with-nan-weights": lambda t, a: (["sample", str(a["nan-model"]), "--n", "2", "--steps", "2", "--out",
                                             str(t / "s.png")], ["model.safetensors", "NaN"]),
    # a dataset whose graph differs from the model's: the differing variable named
    "dataset-lacks-a-variable": lambda t, a: (_cf(a, t / "cf.png", "--do", "angle=10", data="lacking"),
                                              ["shadow_position"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_with_one_line(case, tmp_path, assets, capsys):
    argv, culprits = CASES[case](tmp_path, assets)
    _refused(capsys, tmp_path, argv, *culprits)


@pytest.mark.parametrize("argv, culprit", [
    (["sample", "RUN", "--n", "1e8", "--out", "x.png"], "'1e8'"),
    (["evaluate", "RUN", "--predictors", "P", "--out", "o", "--batch-size", "1e8"], "'1e8'"),
    (["sample", "RUN", "--n", "0", "--out", "x.png"], "positive integer"),
])
def test_usage_errors_name_the_argument(argv, culprit, capsys):
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and culprit in err.strip().splitlines()[-1], err


def test_labels_are_matched_by_name_when_the_graph_lists_them_in_another_order(tmp_path, assets):
    out = tmp_path / "cf.png"
    assert exit_code(_cf(assets, out, "--do", "angle=10")) == 0
    ordered = json.loads(out.with_suffix(".json").read_text())
    out2 = tmp_path / "cf2.png"
    assert exit_code(_cf(assets, out2, "--do", "angle=10", data="reordered")) == 0
    assert json.loads(out2.with_suffix(".json").read_text())["factual_labels"] == ordered["factual_labels"]


def test_image_inputs_are_read_as_dataset_images(tmp_path):
    """--image goes through the dataset's reader: a 16-bit grey PNG is scaled, not clipped to white."""
    from types import SimpleNamespace

    from causaldiffae.cli import _inputs

    path = tmp_path / "deep.png"
    Image.fromarray(np.full((TINY_SIZE, TINY_SIZE), 32768, dtype=np.uint16)).save(path)
    grey = SimpleNamespace(config=SimpleNamespace(channels=1, image_size=TINY_SIZE, num_classes=0))
    x, labels, names, classes = _inputs(SimpleNamespace(image=[str(path)], cls=None), grey)
    assert x.shape == (1, 1, TINY_SIZE, TINY_SIZE) and labels is None and classes is None and names == [str(path)]
    assert torch.allclose(x, torch.full_like(x, 128 / 255))


def test_an_error_under_a_progress_bar_gets_a_line_of_its_own(monkeypatch, capsys):
    from tqdm.auto import tqdm
    from tqdm.std import tqdm as std_tqdm

    from causaldiffae import cli_commands

    def failing(args):
        bar = tqdm(total=10, desc="work")
        bar.update(3)
        raise ValueError("the disk is gone")

    monkeypatch.setattr(cli_commands, "data_check", failing)
    assert exit_code(["data", "check", "anywhere"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("\ncausaldiffae: error: the disk is gone\n") and "Traceback" not in err, repr(err)
    assert not list(std_tqdm._instances)  # closed: none redraws itself over the error later


# -- faults of the file system that need a mount (root) or an unprivileged user ----------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs with the given options at tmp_path/mnt; skipped where this process cannot mount."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / "mnt"
        point.mkdir(exist_ok=True)
        if not IS_ROOT or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root (and mount); CI containers without it skip this fault")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode:
            pytest.skip(f"this machine does not allow mounting a tmpfs: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_read_only_file_system(tmpfs, assets, capsys):
    ro = tmpfs("ro,size=64k")
    assert exit_code(_sample(assets, ro / "grid.png")) == 2
    line = _one_line(capsys, str(ro / "grid.png"))
    assert "Read-only" in line and ".tmp" not in line
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("command", ["evaluate", "tune", "predictors"])
def test_outputs_on_a_read_only_file_system_are_refused_up_front(command, tmpfs, assets, capsys, monkeypatch):
    ro = tmpfs("ro,size=64k")
    from causaldiffae import evaluation, tune
    from causaldiffae.metrics import predictors

    def never(*args, **kwargs):
        raise AssertionError("the work started before the output folder was checked")

    for module, name in ((evaluation, "evaluate_run"), (tune, "tune"), (predictors, "train_predictors")):
        monkeypatch.setattr(module, name, never)
    argv = {"evaluate": ["evaluate", str(assets["model"]), "--data", str(assets["data"]), "--predictors", "none"],
            "tune": ["tune", str(assets["model"]), "--data", str(assets["data"])],
            "predictors": ["predictors", "train", str(assets["data"])]}[command]
    assert exit_code([*argv, "--out", str(ro / "out")]) == 2
    _one_line(capsys, str(ro / "out"), "read-only")
    assert list(ro.iterdir()) == []


def test_full_disk(tmpfs, assets, capsys):
    full = tmpfs("size=16k")
    filler = full / "filler"
    with filler.open("wb", buffering=0) as fh, pytest.raises(OSError):
        while True:
            fh.write(b"\0" * 4096)
    assert exit_code(_sample(assets, full / "grid.png")) == 2
    _one_line(capsys, "No space left", str(full / "grid.png"))
    assert sorted(p.name for p in full.iterdir()) == ["filler"]  # no temporary file left behind


@pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions; the read-only mount covers this case as root")
def test_permission_denied(tmp_path, assets, capsys):
    locked = _folder(tmp_path, "locked")
    locked.chmod(0o500)
    try:
        assert exit_code(_sample(assets, locked / "grid.png")) == 2
        line = _one_line(capsys, "Permission denied", str(locked / "grid.png"))
        assert ".tmp" not in line
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


# -- standard output: closed early (| head) or on a full disk ---------------------------------------------


class _ClosedPipe:
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_closed_stdout_ends_quietly_in_process(monkeypatch, capsys, assets):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert exit_code(["data", "check", str(assets["data"])]) == 141
    assert capsys.readouterr().err == ""


def test_closed_stdout_ends_quietly(assets):
    """causaldiffae data check DIR | head -0: the reader is gone before the first line."""
    proc = subprocess.Popen([sys.executable, "-m", "causaldiffae.cli", "data", "check", str(assets["data"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_stdout_on_a_full_disk(monkeypatch, capsys, assets):
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        assert exit_code(["data", "check", str(assets["data"])]) == 2
        monkeypatch.undo()
    _one_line(capsys, "standard output", "No space left")


@pytest.mark.parametrize("err, words", [
    (IsADirectoryError(21, "Is a directory", "/x/.grid.png.ab_c1234.tmp", None, "/x/grid.png"),
     ["/x/grid.png is a folder"]),
    (OSError(30, "Read-only file system", "/ro/.grid.png.abcd1234.tmp"), ["Read-only", "/ro/grid.png"]),
    (PermissionError(13, "Permission denied", "/p/cfg.yaml"), ["Permission denied", "/p/cfg.yaml"]),
    (OSError(28, "No space left on device"), ["No space left", "--out out.png"]),
    (MemoryError(), ["out of memory"]),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 6400000000 bytes"),
     ["out of memory"]),
    (FileNotFoundError("image not found: a.png"), ["image not found: a.png"]),
])
def test_describe_names_the_path_not_the_temporary_file(err, words):
    line = describe(err, "out.png")
    assert ".tmp" not in line
    for word in words:
        assert word in line, line


# -- the Python API: numpy and float64 in, bad values refused by name, non-finite outputs detected ----------


@pytest.fixture(scope="module")
def model() -> CausalDiffAE:
    return _model()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    rows = pendulum.samples()[::1000][:2]
    return torch.stack([torch.from_numpy(pendulum.render(r["angle"], r["light"], TINY_SIZE)).permute(2, 0, 1)
                        for r in rows]).float() / 255


def test_numpy_and_float64_images_are_converted(model, images):
    expected = counterfactual(model, images, {"angle": 10.0}, steps=2).images
    for x in (images.double(), images.numpy(), images.double().numpy()):
        out = counterfactual(model, x, {"angle": np.float64(10.0)}, steps=2).images
        assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(model.encode(images.numpy()).z, model.encode(images).z)
    values = np.array([0.0, 20.0])
    assert pipeline.sweep(model, images.numpy(), [({"angle": values}, 1.0)], steps=2).images.shape == (1, *images.shape)


def _nan(images: torch.Tensor) -> torch.Tensor:
    bad = images.clone()
    bad[1, 0, 3, 4] = float("nan")
    return bad


API_CASES = {
    "empty-batch": (lambda m, x: counterfactual(m, x[:0], {}, steps=2), "empty"),
    "nan-pixel": (lambda m, x: counterfactual(m, _nan(x), {}, steps=2), "NaN or inf"),
    "inf-pixel-sweep": (lambda m, x: pipeline.sweep(m, x / 0, [({}, 1.0)], steps=2), "NaN or inf"),
    "nan-pixel-encode": (lambda m, x: m.encode(_nan(x)), "image 1"),
    "float64-overflow": (lambda m, x: m.encode(x.double() * 1e300), "float32"),
    "uint8-images": (lambda m, x: counterfactual(m, (x * 255).to(torch.uint8), {}, steps=2), "255"),
    "list-of-images": (lambda m, x: counterfactual(m, x.tolist(), {}, steps=2), "list"),
    "steps-float": (lambda m, x: counterfactual(m, x, {}, steps=2.5), "steps"),
    "steps-zero": (lambda m, x: counterfactual(m, x, {}, steps=0), "steps"),
    "steps-bool": (lambda m, x: pipeline.sweep(m, x, [({}, 1.0)], steps=True), "steps"),
    "steps-decode": (lambda m, x: pipeline.decode(m, x, m.encode(x).z, steps="4"), "steps"),
    "steps-abduct": (lambda m, x: pipeline.abduct_noise(m, x, m.encode(x).z, steps=-1), "steps"),
    "steps-sample": (lambda m, x: pipeline.sample(m, {}, 2, steps=1.5), "steps"),
    "depth-string": (lambda m, x: counterfactual(m, x, {}, steps=2, depth="0.5"), "depth"),
    "guidance-nan": (lambda m, x: counterfactual(m, x, {}, steps=2, guidance=float("nan")), "guidance"),
    "guidance-inf-sweep": (lambda m, x: pipeline.sweep(m, x, [({}, 1.0), ({}, math.inf)], steps=2), "guidance"),
    "guidance-nan-decode": (lambda m, x: pipeline.decode(m, x, m.encode(x).z, steps=2, guidance=math.nan), "guidance"),
    "guidance-nan-sample": (lambda m, x: pipeline.sample(m, {}, 2, steps=2, guidance=math.nan), "guidance"),
    "no-columns": (lambda m, x: pipeline.sweep(m, x, [], steps=2), "at least one"),
    "column-not-a-pair": (lambda m, x: pipeline.sweep(m, x, [{"angle": 1.0}], steps=2), "column 0"),
    "sample-n-zero": (lambda m, x: pipeline.sample(m, {}, 0, steps=2), "n must"),
    "sample-n-float": (lambda m, x: pipeline.sample(m, {}, 2.0, steps=2), "n must"),
    "sample-n-huge": (lambda m, x: pipeline.sample(m, {}, 10**12, steps=2), "GiB"),
    "nan-x_T": (lambda m, x: pipeline.decode(m, _nan(x), m.encode(x).z, steps=2), "x_T"),
    "z-wrong-shape": (lambda m, x: pipeline.decode(m, x, m.encode(x).z[:, :2], steps=2), "z must have shape"),
    "do-nan": (lambda m, x: counterfactual(m, x, {"angle": np.float32("nan")}, steps=2), "finite"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_refuses_by_name(case, model, images):
    call, message = API_CASES[case]
    with pytest.raises(ValueError, match=message):
        call(model, images)


@pytest.mark.parametrize("where", ["unet", "encoder", "null_cond"])
def test_a_model_whose_weights_hold_nan_is_detected(where, images):
    model = _model()
    weight = model.null_cond if where == "null_cond" else next(getattr(model, where).parameters())
    with torch.no_grad():
        weight.fill_(math.nan)
    with pytest.raises(ValueError, match="NaN or inf"):
        counterfactual(model, images, {"angle": 10.0}, steps=2, guidance=2.0)


def test_nan_weights_are_refused_at_load(assets):
    with pytest.raises(ValueError, match="holds NaN or inf in 1 tensor"):
        CausalDiffAE.from_pretrained(assets["nan-model"])


def test_huge_guidance_overflow_is_reported(model, images):
    with pytest.raises(ValueError, match="decoded images hold NaN or inf.*guidance 1e\\+38 is too large"):
        counterfactual(model, images, {"angle": 10.0}, steps=2, guidance=1e38)


def test_requests_beyond_the_memory_are_refused_before_any_work(model, images, monkeypatch):
    monkeypatch.setattr(memory, "budget", lambda device="cpu": 2**20)  # a machine of 1 MiB
    calls = []
    monkeypatch.setattr(model, "eps", lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="sweep of 100 columns over 2 images needs about"):
        pipeline.sweep(model, images, [({"angle": float(v)}, 1.0) for v in range(100)], steps=2)
    with pytest.raises(ValueError, match="sampling 1,000 images"):
        pipeline.sample(model, {}, 1000, steps=2)
    assert calls == []


def test_evaluate_refuses_an_n_beyond_the_memory_before_any_work(model, assets):
    from types import SimpleNamespace

    from causaldiffae.metrics.settings import Settings
    from causaldiffae.metrics.suite import evaluate

    judges = SimpleNamespace(variables=GRAPH.variables)  # never used: the request is refused first
    with pytest.raises(ValueError, match="n=100,000,000,000 interventions needs about"):
        evaluate(model, load_dataset(assets["data"]), judges, Settings(n=10**11), progress=False)


def test_large_batches_run_in_bounded_calls_with_the_same_results(model, images, monkeypatch):
    columns = [({"angle": -10.0}, 1.0), ({"angle": 20.0}, 1.0), ({"light": 70.0}, 2.0)]
    whole = pipeline.sweep(model, images, columns, steps=3, reconstruct=True)
    monkeypatch.setattr(pipeline, "MAX_PIXELS_PER_CALL", 3 * TINY_SIZE**2)  # one image per call
    sizes = []
    eps = model.eps

    def recording(x_t, t, cond):
        sizes.append(len(x_t))
        return eps(x_t, t, cond)

    monkeypatch.setattr(model, "eps", recording)
    chunked = pipeline.sweep(model, images, columns, steps=3, reconstruct=True)
    assert max(sizes) <= 2  # one image, both branches of guidance
    for field in ("images", "x_T", "z", "z_cf", "reconstruction"):
        assert torch.allclose(getattr(chunked, field), getattr(whole, field), atol=1e-5), field
    for name in whole.labels_cf:
        assert torch.allclose(chunked.labels_cf[name], whole.labels_cf[name], atol=1e-5), name
    gen = torch.Generator().manual_seed(0)
    small = pipeline.sample(model, {"angle": 5.0}, 3, steps=2, generator=gen)
    monkeypatch.setattr(pipeline, "MAX_PIXELS_PER_CALL", 1 << 24)
    whole = pipeline.sample(model, {"angle": 5.0}, 3, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(small, whole, atol=1e-5)


# -- reports: never a bare NaN in JSON ------------------------------------------------------------------


def _strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"bare {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_reports_write_null_for_non_finite_numbers(tmp_path, monkeypatch):
    doc = {"summary": {}, "reversibility_l1": math.nan, "fid": [1.0, math.inf, np.float32("nan")],
           "nested": {"kid": -math.inf, "ok": 0.5, "n": 3, "flag": True}}
    assert _strict_json(report.to_json(doc)) == {"summary": {}, "reversibility_l1": None, "fid": [1.0, None, None],
                                                 "nested": {"kid": None, "ok": 0.5, "n": 3, "flag": True}}
    monkeypatch.setattr(report, "markdown", lambda document: "report\n")
    report.write_report(doc, tmp_path / "out")
    assert _strict_json((tmp_path / "out" / "metrics.json").read_text())["reversibility_l1"] is None


def test_tune_results_and_predictors_files_write_null_for_non_finite_numbers(tmp_path):
    from causaldiffae.metrics.predictors import Predictors, load_predictors, save_predictors
    from causaldiffae.reproduce import column_value, write_comparison
    from causaldiffae.tune import write_tuning

    row = {"depth": 1.0, "guidance": 1.0, "true_cf_l1": math.nan, "true_cf_l1_sem": math.inf, "null_l1": 1.0,
           "null_l1_sem": 0.0, "paired_difference": 0.0, "paired_sem": math.nan, "within_one_sem": True}
    result = {"settings": {"split": "val", "seed": 0, "steps": 2}, "criterion": "true_cf_l1", "images": 2,
              "grid": [row], "lowest": {"depth": 1.0, "guidance": 1.0}, "best": {"depth": 1.0, "guidance": 1.0}}
    write_tuning(result, tmp_path / "tune", "run", "data")
    grid = _strict_json((tmp_path / "tune" / "tune.json").read_text())["grid"][0]
    assert grid["true_cf_l1"] is None and grid["true_cf_l1_sem"] is None and grid["null_l1"] == 1.0

    doc = {"settings": {"n": 1, "seeds": [0, 1], "steps": 1, "depth": 0.7, "guidance": 1, "abduction": "ddim"},
           "predictors": {}, "summary": {"dci": {"disentanglement": {"mean": math.nan, "std": math.nan}}},
           "seeds": [{"realism": {"fid": math.nan}}, {"realism": {"fid": math.inf}}]}
    write_comparison("toy", {"causaldiffae": doc, "other": [doc, doc]}, tmp_path, "none")
    results = _strict_json((tmp_path / "results.json").read_text())
    assert results["training_seeds"] == {"causaldiffae": 1, "other": 2}
    assert column_value({"realism": {"fid": None}}, ("realism", "fid")) is None  # a null reads as no value

    judges = Predictors(GRAPH, TINY_SIZE, 3, width=4)
    judges.held_out_split = "test"
    judges.held_out = {"angle": {"mae": math.nan, "mae_normalized": math.inf, "n": 0}}
    judges.training_settings = {"seconds": math.nan}
    save_predictors(judges, tmp_path / "p")
    assert _strict_json((tmp_path / "p" / "predictors.json").read_text())["held_out"]["angle"]["mae"] is None
    loaded = load_predictors(tmp_path / "p")
    assert loaded.held_out["angle"] == {"mae": None, "mae_normalized": None, "n": 0}
    assert "n/a" in report.fmt(loaded.held_out["angle"]["mae"])


# -- property-based: the parsers a user feeds ----------------------------------------------------------------

NAMES = st.sampled_from([*GRAPH.variables, "nope", "", " angle ", "ANGLE"])
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str),
                    st.sampled_from(["nan", "inf", "-inf", "1e400", "", " ", "1_0", "0x10", "٣"]), st.text(max_size=8))
VALUES = st.one_of(NUMBERS, st.tuples(NUMBERS, NUMBERS, NUMBERS).map(":".join),
                   st.tuples(NUMBERS, NUMBERS).map(":".join), st.text(max_size=12))
# CATALOGUE_EXAMPLES=3000 explores further (about 40 s)
PROPERTY = settings(max_examples=int(os.environ.get("CATALOGUE_EXAMPLES", 150)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(st.lists(st.tuples(NAMES, st.sampled_from(["=", "", "=="]), VALUES).map("".join), max_size=4))
def test_parse_do_returns_finite_values_or_refuses_by_name(items):
    try:
        fixed, swept = parse_do(items, GRAPH)
    except ValueError as err:
        assert str(err)  # a message, never another exception type
        return
    for name, value in fixed.items():
        assert name in GRAPH.variables and math.isfinite(value)
    if swept is not None:
        name, values = swept
        assert name in GRAPH.variables and 1 <= len(values) <= MAX_SWEEP
        assert all(math.isfinite(v) for v in values)


@PROPERTY
@given(st.sampled_from(GRAPH.variables), st.floats(allow_nan=False, allow_infinity=False),
       st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
       st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
       st.integers(min_value=1, max_value=MAX_SWEEP))
def test_parse_do_round_trips_values_and_ranges(name, value, start, stop, count):
    fixed, swept = parse_do([f"{name}={value!r}", f"{name}={start!r}:{stop!r}:{count}"], GRAPH)
    assert fixed == {name: value}
    assert swept[0] == name and len(swept[1]) == count and swept[1][0] == start
    if count > 1:
        assert swept[1][-1] == stop
        low, high = min(start, stop), max(start, stop)
        slack = 1e-12 * max(abs(start), abs(stop))
        assert all(low - slack <= v <= high + slack for v in swept[1])


KEYS = st.one_of(st.sampled_from(["train.lr", "train.batch_size", "train.max_minutes", "data.image_size",
                                  "data.label_fraction", "model.latent_dim", "model.channel_mult", "model.p_uncond",
                                  "graph", "train", "train.lr.x", "nope.key", ".lr", "train.", ""]),
                 st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", max_size=16))
YAML_VALUES = st.one_of(NUMBERS, st.sampled_from([".nan", ".inf", "-.inf", "null", "true", "[1, 2]", "{a: 1}", "[",
                                                  "'x'", "!!python/object:os.system x", "1e-4", "0", "-1"]),
                        st.text(max_size=12))


@PROPERTY
@given(st.lists(st.tuples(KEYS, st.sampled_from(["=", ""]), YAML_VALUES).map("".join), max_size=3))
def test_set_pairs_load_or_are_refused_by_name(pairs):
    try:
        config = load_run_config(TINY_CONFIG, pairs)
    except ValueError as err:
        assert str(err)
        return
    for value in (config.train.lr, config.train.ema_decay, config.train.grad_clip, config.model["p_uncond"]):
        assert math.isfinite(value)


@PROPERTY
@given(st.floats(min_value=1e-12, max_value=1.0, allow_nan=False))
def test_set_round_trips_a_float(lr):
    assert load_run_config(TINY_CONFIG, [f"train.lr={lr!r}"]).train.lr == lr
