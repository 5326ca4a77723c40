"""Datasets in one on-disk layout (see base.py); built-in ones are generated on first use."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import morphomnist, pendulum
from .base import ImageDataset, load_dataset, write_dataset


@dataclass(frozen=True)
class Builtin:
    """What the package knows about a built-in dataset by its name; every list of datasets derives from
    ``BUILTIN`` (the generator and SCM of each live in its module: ``generate``, ``GRAPH``, ``VARIABLES``,
    ``true_counterfactual``)."""

    generate: Callable[..., Path]
    """generate(out, size, progress) writes the dataset layout."""
    graph: dict
    variables: tuple[str, ...]
    layout: int
    """The folder layout's version: a new one (the validation splits: v2) is generated into a new cache folder
    instead of silently reusing an old layout."""
    image_size: int
    """The default size (configs, predictors)."""
    class_column: str | None = None
    """A labels.csv column of classes that a model may also be conditioned on."""
    renderings: bool = False
    """Whether ``generate`` takes ``renderings`` (several renderings of each training source)."""


BUILTIN: dict[str, Builtin] = {
    "pendulum": Builtin(pendulum.generate, pendulum.GRAPH, pendulum.VARIABLES, layout=2, image_size=32),
    "morphomnist": Builtin(morphomnist.generate, morphomnist.GRAPH, morphomnist.VARIABLES, layout=2, image_size=28,
                           class_column="digit", renderings=True),
}


def cache_dir() -> Path:
    """Where generated datasets live: ``$CAUSALDIFFAE_CACHE`` or ``~/.cache/causaldiffae``."""
    return Path(os.environ.get("CAUSALDIFFAE_CACHE") or Path.home() / ".cache" / "causaldiffae")


def dataset_root(name: str, root: str | Path | None, image_size: int, renderings: int = 1) -> Path:
    """The folder of a dataset: ``root``, else the cache folder of a built-in one (``-r{R}`` with R renderings)."""
    if renderings != 1 and not (name in BUILTIN and BUILTIN[name].renderings):
        able = ", ".join(n for n, b in BUILTIN.items() if b.renderings)
        raise ValueError(f"data.renderings = {renderings} applies only to generated datasets that render a source "
                         f"several times ({able}), not to {name!r}")
    if root:
        return Path(root)
    if name not in BUILTIN:
        raise ValueError(f"data.name {name!r} needs data.root (built-in datasets: {', '.join(BUILTIN)})")
    version = BUILTIN[name].layout
    return cache_dir() / (f"{name}-{image_size}" + (f"-v{version}" if version > 1 else "")
                          + (f"-r{renderings}" if renderings != 1 else ""))


def open_dataset(name: str, root: str | Path | None, image_size: int, resize: bool = False,
                 progress: bool = True, class_column: str | None = None, renderings: int = 1) -> ImageDataset:
    """Load a dataset; a built-in one whose folder does not exist yet is generated there first."""
    folder = dataset_root(name, root, image_size, renderings)
    if name in BUILTIN and not (folder / "labels.csv").exists():
        extra = {"renderings": renderings} if renderings != 1 else {}
        BUILTIN[name].generate(folder, image_size, progress=progress, **extra)
    return load_dataset(folder, image_size, resize, class_column=class_column)


__all__ = ["BUILTIN", "Builtin", "ImageDataset", "cache_dir", "dataset_root", "load_dataset", "open_dataset",
           "write_dataset"]
