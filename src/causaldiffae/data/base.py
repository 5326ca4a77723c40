"""The one on-disk dataset layout: ``DIR/graph.yaml``, ``DIR/labels.csv`` and ``DIR/images/``.

``labels.csv`` has the columns ``file``, ``split`` (train, val or test), then one column per graph variable;
an empty cell is a missing label. Every dataset, built-in or the user's own, is read and written here.
Decoded images are cached next to the data as a ``.npy`` array (no pickle) keyed by the size and the CSV.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError

from ..atomic import atomic_dir, atomic_path
from ..graph import CausalGraph

SPLITS = ("train", "val", "test")


@dataclass
class ImageDataset:
    """All images in memory as uint8 (N, C, H, W) with raw labels (N, n_vars), NaN where missing."""

    root: Path
    graph: CausalGraph
    files: list[str]
    splits: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor | None = None
    """(N,) integer classes of an extra condition (``data.class_column``), when asked for."""

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def split(self, name: str) -> ImageDataset:
        """The rows of one split (train, val or test)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}")
        idx = [i for i, s in enumerate(self.splits) if s == name]
        if not idx:
            raise ValueError(f"dataset {self.root} has no images in split {name!r}")
        return self.subset(idx)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageDataset:
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.root, self.graph, [self.files[i] for i in index], [self.splits[i] for i in index],
                            self.images[index], self.labels[index],
                            None if self.classes is None else self.classes[index])

    def batch(self, indices: torch.Tensor | Sequence[int],
              device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """{"image": float (B, C, H, W) in [0, 1], "labels": (B, n) raw units[, "class": (B,)]} on ``device``."""
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = {"image": self.images[index].to(device).float() / 255, "labels": self.labels[index].to(device)}
        if self.classes is not None:
            batch["class"] = self.classes[index].to(device)
        return batch


def hide_labels(dataset: ImageDataset, fraction: float | Mapping[str, float], seed: int) -> ImageDataset:
    """Weak supervision: the dataset with most training labels hidden (NaN); val and test rows keep theirs.

    ``fraction`` f in (0, 1] for every variable, or {variable: f} (unnamed variables keep all labels). Of the
    n train rows that have a variable's label, a random ``max(1, round(f * n))`` keep it (Python's round: half to
    even); the subset comes from ``numpy.random.default_rng([seed, crc32(variable name)])``, so the same seed
    hides the same labels, and the variables' subsets are independent of each other and of the graph's order.
    """
    names = dataset.graph.variables
    fractions = {name: float(fraction) for name in names} if isinstance(fraction, (int, float)) else dict(fraction)
    unknown = sorted(set(fractions) - set(names))
    if unknown:
        raise ValueError(f"data.label_fraction names {', '.join(map(repr, unknown))}, which the dataset's graph "
                         f"does not have; its variables are {', '.join(names)}")
    bad = {k: v for k, v in fractions.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not 0 < v <= 1}
    if bad:
        raise ValueError(f"data.label_fraction must lie in (0, 1], got {bad}")
    labels = dataset.labels.clone()
    train = np.array([s == "train" for s in dataset.splits], dtype=bool)
    for name, f in fractions.items():
        if f >= 1:
            continue
        column = labels[:, names.index(name)]
        present = np.flatnonzero(train & ~torch.isnan(column).numpy())
        if len(present) == 0:
            continue
        keep = max(1, round(f * len(present)))
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        hidden = rng.permutation(present)[keep:]
        column[torch.from_numpy(hidden)] = math.nan
    return replace(dataset, labels=labels)


def read_labels(root: Path, graph: CausalGraph, extra: Sequence[str] = ()) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``labels.csv``: files, splits, and labels (N, n_vars + len(extra)) float64, NaN for empty cells."""
    path = root / "labels.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a dataset folder needs graph.yaml, labels.csv and images/")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in ["file", "split", *graph.variables, *extra] if c not in columns]
        if missing:
            raise ValueError(f"{path}: no column for {', '.join(missing)} (columns are {', '.join(columns)})")
        files, splits, rows = [], [], []
        for line, row in enumerate(reader, start=2):
            if row["split"] not in SPLITS:
                raise ValueError(f"{path} line {line}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
            files.append(row["file"])
            splits.append(row["split"])
            rows.append([_label(row[v], v, path, line) for v in [*graph.variables, *extra]])
    if not files:
        raise ValueError(f"{path} has no rows")
    return files, splits, np.asarray(rows, dtype=np.float64).reshape(len(files), len(graph) + len(extra))


def _label(cell: str | None, name: str, path: Path, line: int) -> float:
    cell = (cell or "").strip()
    if not cell:
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"{path} line {line}: label {name}={cell!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{path} line {line}: label {name}={cell!r} must be finite (leave the cell empty "
                         "for a missing label)")
    return value


def load_dataset(root: str | Path, image_size: int | None = None, resize: bool = False,
                 graph: CausalGraph | None = None, class_column: str | None = None) -> ImageDataset:
    """Read a dataset folder; ``image_size`` checks (or with ``resize`` sets) the square image size;
    ``class_column`` names a labels.csv column of integer classes (an extra condition, never missing)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    graph = graph or CausalGraph.from_yaml(root / "graph.yaml")
    files, splits, table = read_labels(root, graph, [class_column] if class_column else [])
    labels, classes = table[:, : len(graph)], _classes(table[:, len(graph)], class_column) if class_column else None
    csv_hash = hashlib.sha1((root / "labels.csv").read_bytes()).hexdigest()[:12]
    cache = root / "cache" / f"images-{image_size or 'native'}-{int(resize)}-{csv_hash}.npy"
    if cache.is_file():
        images = np.load(cache, allow_pickle=False)
    else:
        images = _decode_all(root, files, image_size, resize)
        try:
            with atomic_path(cache) as tmp, tmp.open("wb") as fh:
                np.save(fh, images, allow_pickle=False)
        except OSError:
            pass  # a read-only dataset folder still loads, only slower next time
    return ImageDataset(root, graph, files, splits, torch.from_numpy(images), torch.from_numpy(labels).float(),
                        None if classes is None else torch.from_numpy(classes))


def _classes(column: np.ndarray, name: str) -> np.ndarray:
    bad = np.flatnonzero(np.isnan(column) | (column < 0) | (column != np.round(column)))
    if len(bad):
        raise ValueError(f"class column {name!r} needs a non-negative integer in every row; row {bad[0] + 1} "
                         f"has {column[bad[0]]!r}")
    return column.astype(np.int64)


def _decode_all(root: Path, files: list[str], image_size: int | None, resize: bool) -> np.ndarray:
    arrays, first = [], None
    for name in files:
        path = root / "images" / name
        try:
            with Image.open(path) as img:
                img.load()
                mode = "L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB"
                img = img.convert(first[0] if first else mode)
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path} listed in labels.csv is missing") from None
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"image {path} is unreadable: {err}") from None
        if first is None:
            first = (img.mode, img.size)
        target = (image_size, image_size) if image_size else first[1]
        if img.size != target:
            if not resize:
                raise ValueError(f"image {path} is {img.size[0]}x{img.size[1]} but {target[0]}x{target[1]} is "
                                 "expected; set data.resize: true to resize all images")
            img = img.resize(target, Image.Resampling.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(arrays))


def write_dataset(out: str | Path, graph: CausalGraph, rows: Iterable[Mapping[str, Any]],
                  images: Iterable[np.ndarray], extra_columns: Sequence[str] = ()) -> Path:
    """Write a dataset folder atomically; ``rows`` carry file, split and every variable, ``images`` uint8
    (H, W) or (H, W, C) arrays in the same order. Float labels are written exactly (repr).

    ``extra_columns`` are numeric columns of ``rows`` that are not graph variables (e.g. a class label); they
    follow the variables in labels.csv and are written the same way."""
    out = Path(out)
    columns = [*graph.variables, *extra_columns]
    if len(set(columns) | {"file", "split"}) != len(columns) + 2:
        raise ValueError(f"extra columns {list(extra_columns)} repeat file, split or a graph variable")
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file", "split", *columns])
        for row, image in zip(rows, images, strict=True):
            Image.fromarray(image).save(tmp / "images" / row["file"], format="PNG")
            writer.writerow([row["file"], row["split"], *(_cell(row.get(v)) for v in columns)])
        (tmp / "labels.csv").write_text(buffer.getvalue())
        (tmp / "graph.yaml").write_text(yaml.safe_dump(graph.to_dict(), sort_keys=False))
    return out


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value))
