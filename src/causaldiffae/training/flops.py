"""Training compute in FLOPs: what a recipe costs, independent of the CPU or GPU that runs it.

Seconds depend on the machine (bf16 is native on some CPUs and emulated, many times slower, on others); FLOPs
do not. The compute of a run is the images it saw times the FLOPs of one training image, counted here by
torch's own operator counter (matrix multiplications and convolutions, forward and backward). A part held by
``train.freeze`` computes no weight gradients, so a fine-tune that freezes the UNet costs less per image.
"""

from __future__ import annotations

import copy
import csv
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from ..model import CausalDiffAE


def flops_per_image(step: Callable[[], torch.Tensor], batch_size: int) -> float:
    """FLOPs of one training step (``step()`` returns the loss; its backward is counted too) per image."""
    counter = FlopCounterMode(display=False)
    with counter:
        step().backward()
    return counter.get_total_flops() / batch_size


def model_flops_per_image(model: CausalDiffAE, batch: Mapping[str, torch.Tensor],
                          freeze: Sequence[str] = ()) -> float:
    """FLOPs per image of one training step of a CausalDiffAE (encoder, causal layer, UNet; forward and
    backward) on ``batch``, with the parts in ``freeze`` held as ``train.freeze`` holds them. ``model`` is left
    as it was (a frozen copy is counted)."""
    counted = copy.deepcopy(model) if freeze else model
    counted.freeze(freeze)
    was_training = counted.training
    counted.train()
    try:
        return flops_per_image(lambda: counted(batch)["loss"], len(batch["image"]))
    finally:
        counted.zero_grad(set_to_none=True)
        counted.train(was_training)


def synthetic_batch(model: CausalDiffAE, n: int = 4) -> dict[str, torch.Tensor]:
    """A batch of the shapes ``model`` trains on: its FLOPs depend on shapes, not on values."""
    config = model.config
    batch = {"image": torch.rand(n, config.channels, config.image_size, config.image_size),
             "labels": torch.zeros(n, len(model.graph))}
    if config.num_classes:
        batch["class"] = torch.zeros(n, dtype=torch.long)
    return batch


@dataclass(frozen=True)
class Stage:
    """One training run behind a model: its files, the images it saw and what each cost."""

    name: str
    config: str
    metrics: str
    steps: int
    batch_size: int
    freeze: tuple[str, ...]
    flops_per_image: float

    @property
    def images(self) -> int:
        return self.steps * self.batch_size

    @property
    def flops(self) -> float:
        return self.images * self.flops_per_image

    def to_dict(self) -> dict:
        return {**asdict(self), "images": self.images, "flops": self.flops}


def stage_files(folder: Path) -> list[tuple[str, Path, Path]]:
    """The runs behind a model folder, oldest first, as (name, config, metrics.csv): ``base-config.yaml`` with
    ``base-metrics.csv``, then ``finetune-N-config.yaml`` with ``finetune-N-metrics.csv`` in the order of N, then
    ``config.yaml`` with ``metrics.csv`` (the run that wrote the weights; a plain run folder has only this one)."""
    found = []
    for config in folder.glob("*config.yaml"):
        prefix = config.name[: -len("config.yaml")]
        match = re.fullmatch(r"(base-|finetune-(\d+)-|)", prefix)
        metrics = folder / f"{prefix}metrics.csv"
        if match and metrics.exists():
            order = (0, 0) if prefix == "base-" else (1, int(match[2])) if match[2] else (2, 0)
            found.append((order, prefix.rstrip("-") or "final", config, metrics))
    if not any(name == "final" for _, name, _, _ in found):
        raise FileNotFoundError(f"{folder} has no config.yaml with a metrics.csv beside it: not a training run's "
                                "folder or a shipped model")
    return [(name, config, metrics) for _, name, config, metrics in sorted(found)]


def last_step(metrics: Path) -> int:
    """The last optimiser step a metrics.csv logged (a finished run logs its last step)."""
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{metrics} has no rows: the run logged no step")
    return int(rows[-1]["step"])


def training_compute(folder: str | Path) -> list[Stage]:
    """The training compute behind a model folder, run by run (``stage_files``): the images each run saw (its
    metrics.csv and its batch size) times the counted FLOPs of one of its training images. The batch size is per
    process: a run on N processes saw N times the images counted here."""
    folder = Path(folder)
    model = CausalDiffAE.from_pretrained(folder)
    batch = synthetic_batch(model)
    stages = []
    for name, config_path, metrics in stage_files(folder):
        train = (yaml.safe_load(config_path.read_text()) or {}).get("train") or {}
        if "batch_size" not in train:
            raise ValueError(f"{config_path} has no train.batch_size: not the resolved config a run writes")
        freeze = tuple(train.get("freeze") or ())
        stages.append(Stage(name, config_path.name, metrics.name, last_step(metrics), int(train["batch_size"]),
                            freeze, model_flops_per_image(model, batch, freeze)))
    return stages
