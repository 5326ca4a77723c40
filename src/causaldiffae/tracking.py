"""Experiment trackers beside ``metrics.csv``: any that accelerate supports (TensorBoard, W&B, MLflow, ...).

``train.log_with`` and ``evaluate --log-with`` name them. accelerate itself skips a tracker whose package is
missing without a word, so the names are checked here first: an unknown name or a missing package is one error
that names the key. Trackers that write files (TensorBoard, Aim) write under the folder's ``logs/``, one run
folder per command (``logs/train``, ``logs/evaluate``), so that ``tensorboard --logdir RUN/logs`` shows both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

#: The trackers' folder inside a run (or report) folder.
LOGS = "logs"
#: How to install the package of a tracker, where it is not the tracker's own name.
INSTALL = {"tensorboard": "pip install 'causaldiffae[track]' (or pip install tensorboard)",
           "comet_ml": "pip install comet-ml", "aim": "pip install aim"}


def supported() -> list[str]:
    """The tracker names that this accelerate knows (its built-in ones and any registered with it)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


def names(value: str | Sequence[str] | None, key: str) -> list[str]:
    """The tracker names of a config value: null (none), a name, a comma-separated string or a list of names;
    an unknown name raises naming ``key`` and the supported ones."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (str(i).strip().lower() for i in items):
        if item in ("", "none") and len(items) == 1:
            return []
        if item not in supported():
            raise ValueError(f"{key}: {item!r} is not a tracker that accelerate supports; choose from "
                             f"{', '.join(supported())} (or null: metrics.csv only)")
        if item not in out:
            out.append(item)
    return out


def check_installed(trackers: Sequence[str], key: str) -> None:
    """Refuse a tracker whose package is missing, before any work (accelerate would drop it silently)."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [t for t in trackers if t not in available]
    if missing:
        hints = "; ".join(INSTALL.get(t, f"pip install {t}") for t in missing)
        raise ValueError(f"{key}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
                         f"{hints}; or leave {key} out (metrics.csv is always written)")


def accelerator_options(trackers: Sequence[str], folder: Path) -> dict[str, Any]:
    """The Accelerator arguments that log to ``trackers``, their files under ``folder/logs``."""
    return {"log_with": list(trackers) or None,
            "project_config": ProjectConfiguration(project_dir=str(folder), logging_dir=str(folder / LOGS))}


def start(accelerator: Accelerator, project: str, config: Mapping[str, Any] | None = None,
          purge_from: int | None = None) -> None:
    """Start the trackers as run ``project`` with ``config`` (flattened) as its hyperparameters. ``purge_from``:
    TensorBoard hides the events that earlier writers of this folder logged at that step or later (a resumed run
    logs those steps again), so the folder reads as one run."""
    if not accelerator.log_with:
        return
    purge = {"tensorboard": {"purge_step": purge_from}} if purge_from is not None else {}
    accelerator.init_trackers(project, config=_flat(config) if config is not None else None, init_kwargs=purge)


def log_images(accelerator: Accelerator, images: Mapping[str, np.ndarray], step: int) -> None:
    """Log (H, W, C) uint8 images to each tracker that takes images (TensorBoard, W&B, Aim, ClearML, SwanLab)."""
    for tracker in accelerator.trackers:
        log = getattr(tracker, "log_images", None)
        if log is None:  # this tracker logs numbers only (MLflow, Comet, DVCLive, Trackio)
            continue
        batches = {tag: image[None] for tag, image in images.items()}  # a batch of one, N H W C
        if tracker.name == "tensorboard":
            log(batches, step=step, dataformats="NHWC")
            tracker.tracker.flush()  # accelerate flushes scalars, not images: a crash would lose the grid
        else:
            log(batches, step=step)


def log_once(trackers: Sequence[str], folder: Path, project: str, values: Mapping[str, float], step: int) -> None:
    """Log ``values`` at ``step`` as run ``project`` under ``folder/logs`` and close the trackers. Numbers that
    an earlier call logged there at this step or later are hidden (TensorBoard), so a repeated call replaces them."""
    if not trackers:
        return
    accelerator = Accelerator(cpu=True, **accelerator_options(trackers, folder))
    start(accelerator, project, purge_from=step)
    accelerator.log(dict(values), step=step)
    accelerator.end_training()


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config as the flat ``section.key`` hyperparameters that trackers take: numbers, booleans and
    strings as they are, anything else (null, lists, dicts) as its JSON text."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out
