"""The CausalCircuit loader on small .npz files written in the release's layout, and `data check`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from causaldiffae.data import circuit
from causaldiffae.data.base import load_dataset
from causaldiffae.data.check import summarize


def _jpeg(colour: tuple[int, int, int], size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _release(path: Path, n: int, seed: int = 0) -> np.ndarray:
    """Write an npz like Qualcomm's: imgs (N, 2) JPEG bytes, original_latents (N, 2, 4) = (r, g, b, arm)."""
    rng = np.random.default_rng(seed)
    latents = rng.random((n, 2, 4))
    imgs = np.array([[_jpeg(tuple(int(255 * v) for v in row[0, :3])), _jpeg((0, 0, 0))] for row in latents],
                    dtype=object)
    np.savez(path, imgs=imgs.astype(bytes), original_latents=latents, pressed=np.zeros((n, 2)))
    return latents


def test_convert_keeps_the_pre_intervention_element(tmp_path):
    latents = _release(tmp_path / "train.npz", 6)
    _release(tmp_path / "test.npz", 3, seed=1)
    out = circuit.convert([tmp_path / "train.npz", tmp_path / "test.npz"], tmp_path / "data", size=16)
    data = load_dataset(out)
    assert data.graph.variables == ["arm", "blue", "green", "red"]
    assert set(data.graph.edges) == {("arm", "blue"), ("arm", "green"), ("arm", "red"), ("blue", "red"),
                                     ("green", "red")}
    assert data.splits == ["train"] * 6 + ["test"] * 3
    assert data.images.shape == (9, 3, 16, 16)
    expected = latents[:, 0][:, [3, 2, 1, 0]]  # (r, g, b, arm) -> (arm, blue, green, red)
    assert np.allclose(data.labels[:6].numpy(), expected, atol=1e-6)
    red = data.images[0, 0].float().mean().item()  # the image's red channel follows the first element's red
    assert abs(red - 255 * latents[0, 0, 0]) < 6


def test_unnamed_files_are_split_at_random(tmp_path):
    _release(tmp_path / "chunk.npz", 40)
    data = load_dataset(circuit.convert([tmp_path / "chunk.npz"], tmp_path / "d", size=8, test_fraction=0.25))
    assert 0 < data.splits.count("test") < 40 and set(data.splits) == {"train", "test"}


def test_foreign_or_broken_files_are_named(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="original_latents|imgs"):
        circuit.convert([tmp_path / "other.npz"], tmp_path / "d")
    np.savez(tmp_path / "bad.npz", imgs=np.array([[b"notjpeg", b"x"]]), original_latents=np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="bad-000000.png"):
        circuit.convert([tmp_path / "bad.npz"], tmp_path / "d")
    with pytest.raises(FileNotFoundError):
        circuit.convert([tmp_path / "missing.npz"], tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_check_summarizes_coverage_and_ranges(tiny_dataset, tmp_path):
    text = summarize(tiny_dataset)
    assert "48 images of 16x16, 3 channel(s)" in text
    for name in ("angle", "light", "shadow_length", "shadow_position"):
        assert name in text
    assert "100%" in text
    # a quarter of the labels missing shows in the coverage
    _release(tmp_path / "train.npz", 8)
    root = circuit.convert([tmp_path / "train.npz"], tmp_path / "c", size=8)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[1:3] = [",".join(cell if i != 2 else "" for i, cell in enumerate(line.split(","))) for line in lines[1:3]]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    assert "6/8" in summarize(root) and "75%" in summarize(root)


def test_cli_data_circuit_and_check(tmp_path, capsys):
    from causaldiffae.cli import main

    _release(tmp_path / "train.npz", 5)
    assert main(["data", "circuit", str(tmp_path / "train.npz"), "--out", str(tmp_path / "c"), "--size", "8"]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "c")]) == 0
    assert "5 images of 8x8" in capsys.readouterr().out
    (tmp_path / "c" / "images" / "train-000002.png").unlink()
    for cache in (tmp_path / "c" / "cache").glob("*.npy"):
        cache.unlink()
    assert main(["data", "check", str(tmp_path / "c")]) == 2
    assert "train-000002.png" in capsys.readouterr().err
