"""Datasets in one on-disk layout (see base.py); built-in ones are generated on first use."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from . import morphomnist, pendulum
from .base import ImageDataset, load_dataset, write_dataset

#: Built-in datasets: name -> generator(out, size) that writes the dataset layout.
GENERATORS: dict[str, Callable[..., Path]] = {"pendulum": pendulum.generate, "morphomnist": morphomnist.generate}
#: Layout versions of the generated folders: a new version (the validation splits, v2) is generated into a
#: new cache folder instead of silently reusing an old layout.
LAYOUTS: dict[str, int] = {"pendulum": 2, "morphomnist": 2}


def cache_dir() -> Path:
    """Where generated datasets live: ``$CAUSALDIFFAE_CACHE`` or ``~/.cache/causaldiffae``."""
    return Path(os.environ.get("CAUSALDIFFAE_CACHE") or Path.home() / ".cache" / "causaldiffae")


def dataset_root(name: str, root: str | Path | None, image_size: int) -> Path:
    if root:
        return Path(root)
    if name not in GENERATORS:
        raise ValueError(f"data.name {name!r} needs data.root (built-in datasets: {', '.join(GENERATORS)})")
    version = LAYOUTS[name]
    return cache_dir() / (f"{name}-{image_size}" + (f"-v{version}" if version > 1 else ""))


def open_dataset(name: str, root: str | Path | None, image_size: int, resize: bool = False,
                 progress: bool = True, class_column: str | None = None) -> ImageDataset:
    """Load a dataset; a built-in one whose folder does not exist yet is generated there first."""
    folder = dataset_root(name, root, image_size)
    if name in GENERATORS and not (folder / "labels.csv").exists():
        GENERATORS[name](folder, image_size, progress=progress)
    return load_dataset(folder, image_size, resize, class_column=class_column)


__all__ = ["GENERATORS", "ImageDataset", "cache_dir", "dataset_root", "load_dataset", "open_dataset",
           "write_dataset"]
