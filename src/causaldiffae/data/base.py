"""The one on-disk dataset layout: ``DIR/graph.yaml``, ``DIR/labels.csv`` and ``DIR/images/``.

``labels.csv`` has the columns ``file``, ``split`` (train, val or test), then one column per graph variable;
an empty cell is a missing label. Every dataset, built-in or the user's own, is read and written here.
labels.csv and graph.yaml are UTF-8 (a byte-order mark is fine). The images are read by image_folder.py: only
files inside ``images/``, headers checked before decoding, one mode for all, and a cache of the decoded pixels.
"""

from __future__ import annotations

import csv
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
from PIL import Image

from ..atomic import atomic_dir
from ..config import read_utf8
from ..graph import CausalGraph
from .image_folder import read_images

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

    def with_variables(self, order: Sequence[str]) -> ImageDataset:
        """The dataset with its variables (graph nodes and label columns) in ``order``, matched by name: a dataset
        whose graph lists a model's variables in another order then lines up with the model, never swapped."""
        names, order = self.graph.variables, list(order)
        if order == names:
            return self
        missing = [v for v in order if v not in names]
        extra = [v for v in names if v not in order]
        if missing or extra or len(set(order)) != len(order):
            problems = ([f"lacks {', '.join(missing)}"] if missing else []) + \
                ([f"has {', '.join(extra)} besides"] if extra else []) or ["cannot be matched"]
            raise ValueError(f"the dataset {self.root} {' and '.join(problems)}: the model's variables are "
                             f"{', '.join(order)}, the dataset's {', '.join(names)}")
        index = [names.index(v) for v in order]
        graph = CausalGraph(tuple(self.graph[v] for v in order), self.graph.edges)
        return replace(self, graph=graph, labels=self.labels[:, index])


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
    files, splits, table, _ = _read_table(root, graph, extra)
    return files, splits, table


def _read_table(root: Path, graph: CausalGraph,
                extra: Sequence[str] = ()) -> tuple[list[str], list[str], np.ndarray, list[int]]:
    """``read_labels`` and the line of labels.csv each row ends on (for messages). The file is UTF-8 (a
    byte-order mark is allowed); columns are matched by name; every row has exactly the header's cells."""
    path = root / "labels.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a dataset folder needs graph.yaml, labels.csv and images/")
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    files, splits, rows, lines = [], [], [], []
    try:
        columns = next(reader, [])
        shown = ", ".join(c if c.isprintable() else repr(c) for c in columns) or "none"
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise ValueError(f"{path}: column {', '.join(map(repr, repeated))} appears more than once")
        missing = [c for c in ["file", "split", *graph.variables, *extra] if c not in columns]
        if missing:
            raise ValueError(f"{path}: no column for {', '.join(missing)} (columns are {shown})")
        for cells in reader:
            line = reader.line_num
            if not cells:
                continue  # a blank line
            if len(cells) != len(columns):
                raise ValueError(f"{path} line {line}: {len(cells)} cell(s) but the header has {len(columns)} "
                                 f"columns ({shown}); leave a cell empty for a missing label")
            row = dict(zip(columns, cells, strict=True))
            if row["split"] not in SPLITS:
                raise ValueError(f"{path} line {line}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
            files.append(_file_cell(row["file"], path, line))
            splits.append(row["split"])
            rows.append([number_cell(row[v], f"label {v}", f"{path} line {line}") for v in [*graph.variables, *extra]])
            lines.append(line)
    except csv.Error as err:
        raise ValueError(f"{path} line {reader.line_num}: not valid CSV ({err})") from None
    if not files:
        raise ValueError(f"{path} has no rows")
    table = np.asarray(rows, dtype=np.float64).reshape(len(files), len(graph) + len(extra))
    return files, splits, table, lines


def _file_cell(name: str, path: Path, line: int) -> str:
    """A ``file`` cell: a path relative to images/ that stays inside it (symlinks are checked on disk later)."""
    parts = name.replace("\\", "/").split("/")
    if not name.strip() or name.startswith(("/", "\\")) or ".." in parts:
        raise ValueError(f"{path} line {line}: file {name!r} must be a path inside images/ (relative, no '..')")
    return name


def number_cell(cell: str | None, name: str, where: str, missing: bool = True) -> float:
    """A CSV cell that holds a finite number, or (where ``missing`` labels are allowed) nothing: NaN. Every message
    names ``where`` (the file and the line of the row) and the column ``name``, so no NaN travels on to fail later
    with a message that names neither."""
    cell = (cell or "").strip()
    if not cell and missing:
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"{where}: {name}={cell!r} is not a number") from None
    if not math.isfinite(value):
        hint = " (leave the cell empty for a missing label)" if missing else ""
        raise ValueError(f"{where}: {name}={cell!r} must be finite{hint}")
    return value


def load_dataset(root: str | Path, image_size: int | None = None, resize: bool = False,
                 graph: CausalGraph | None = None, class_column: str | None = None) -> ImageDataset:
    """Read a dataset folder; ``image_size`` checks (or with ``resize`` sets) the square image size;
    ``class_column`` names a labels.csv column of integer classes (an extra condition, never missing)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    graph = graph or CausalGraph.from_yaml(root / "graph.yaml")
    files, splits, table, lines = _read_table(root, graph, [class_column] if class_column else [])
    labels = table[:, : len(graph)]
    classes = _classes(table[:, len(graph)], class_column, root / "labels.csv", lines) if class_column else None
    images = read_images(root, files, lines, image_size, resize)
    return ImageDataset(root, graph, files, splits, torch.from_numpy(images), torch.from_numpy(labels).float(),
                        None if classes is None else torch.from_numpy(classes))


def _classes(column: np.ndarray, name: str, path: Path, lines: Sequence[int]) -> np.ndarray:
    bad = np.flatnonzero(np.isnan(column) | (column < 0) | (column != np.round(column)))
    if len(bad):
        value = "an empty cell" if np.isnan(column[bad[0]]) else repr(float(column[bad[0]]))
        raise ValueError(f"class column {name!r} needs a non-negative integer in every row; {path} line "
                         f"{lines[bad[0]]} has {value}")
    return column.astype(np.int64)


#: The file that marks a dataset folder written by :func:`write_dataset`: only such a folder (or an empty one) is
#: replaced when a dataset is written again, never a folder of the user's.
DATASET_MARKER = ".causaldiffae-dataset"


def write_dataset(out: str | Path, graph: CausalGraph, rows: Iterable[Mapping[str, Any]],
                  images: Iterable[np.ndarray], extra_columns: Sequence[str] = ()) -> Path:
    """Write a dataset folder atomically; ``rows`` carry file, split and every variable, ``images`` uint8
    (H, W) or (H, W, C) arrays in the same order. Float labels are written exactly (repr). An existing ``out``
    is replaced only if it is empty or was written here (it holds :data:`DATASET_MARKER`).

    ``extra_columns`` are numeric columns of ``rows`` that are not graph variables (e.g. a class label); they
    follow the variables in labels.csv and are written the same way."""
    out = Path(out)
    columns = [*graph.variables, *extra_columns]
    if len(set(columns) | {"file", "split"}) != len(columns) + 2:
        raise ValueError(f"extra columns {list(extra_columns)} repeat file, split or a graph variable")
    with atomic_dir(out, marker=DATASET_MARKER) as tmp:
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
