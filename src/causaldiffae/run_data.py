"""The dataset a model folder was trained on, for the commands and the explorer that show or score it."""

from __future__ import annotations

from pathlib import Path

from .data import load_dataset, open_dataset
from .data.base import ImageDataset
from .graph import CausalGraph
from .model import load_config
from .training import load_run_config


def run_dataset(run: str | Path, data: str | Path | None = None, size: int | None = None) -> ImageDataset:
    """The dataset named by ``run``/config.yaml, or the folder ``data``, at the model's image size (or ``size``),
    with the run's class column and its label columns in the model's variable order (matched by name, so a
    reordered graph.yaml swaps nothing)."""
    config = load_config(Path(run))
    variables = CausalGraph.from_dict(config.graph).variables
    size = size or config.image_size
    run_config = Path(run) / "config.yaml"
    section = load_run_config(run_config).data if run_config.is_file() else None
    column = section.class_column if section else None
    if config.num_classes and column is None:
        raise ValueError(f"{run} is also conditioned on a class (num_classes={config.num_classes}) but has no "
                         f"config.yaml naming the labels.csv column of that class (data.class_column): copy the "
                         f"config.yaml of the run that trained it beside the model")
    if data:
        return load_dataset(data, size, resize=True, class_column=column).with_variables(variables)
    if section is None:
        raise ValueError(f"{run} has no config.yaml naming its dataset: pass --data DIR or --image FILE")
    return open_dataset(section.name, section.root, size, section.resize, class_column=column,
                        renderings=section.renderings).with_variables(variables)
