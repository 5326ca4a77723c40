"""The run configuration: sections graph, data, model and train, loaded from YAML with ``--set`` overrides."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .. import config as cfg
from .. import tracking
from ..data.morphomnist import check_renderings
from ..model import ModelConfig

#: The parts of a CausalDiffAE that train.freeze can hold fixed.
FREEZABLE = ("encoder", "causal_layer", "unet")
#: ModelConfig fields that the run fills in from its graph and data sections.
DERIVED_MODEL_KEYS = ("graph", "image_size", "channels")


@dataclass
class DataConfig:
    name: Literal["pendulum", "morphomnist", "folder"] = cfg.param(
        "pendulum", "dataset: pendulum or morphomnist (generated on first use) or folder (yours)")
    root: str | None = cfg.param(None, "dataset folder; a built-in dataset is generated there (default: the "
                                       "cache folder $CAUSALDIFFAE_CACHE or ~/.cache/causaldiffae)")
    image_size: int = cfg.param(64, "square image size in pixels")
    resize: bool = cfg.param(False, "resize images of another size instead of refusing them")
    class_column: str | None = cfg.param(None, "labels.csv column of integer classes fed to the UNet as an extra "
                                               "condition (needs model.num_classes), e.g. digit; null = none")
    label_fraction: float | dict = cfg.param(1.0, "weak supervision: the share f in (0, 1] of training labels kept, "
                                                  "for every variable or as {variable: f}; the others are hidden "
                                                  "(NaN), chosen with train.seed; val and test keep theirs")
    renderings: int = cfg.param(1, "morphomnist: renderings of each training digit, each with its own draw of the "
                                   "SCM (val and test keep one per digit, the same rows); generated into its own "
                                   "cache folder")

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {self.image_size}")
        check_renderings(self.renderings, "data.renderings")
        self.label_fraction = _check_fraction(self.label_fraction)
        if self.name == "folder" and not self.root:
            raise ValueError("data.name: folder needs data.root, the folder with graph.yaml, labels.csv, images/")


def _check_fraction(value: float | dict) -> float | dict:
    """data.label_fraction as a float in (0, 1] or {variable name: float in (0, 1]}; names are checked against
    the graph when the data are loaded (data.base.hide_labels)."""
    items = value.items() if isinstance(value, dict) else [(None, value)]
    out = {}
    for name, f in items:
        key = "data.label_fraction" + ("" if name is None else f".{name}")
        if not isinstance(name, (str, type(None))):
            raise ValueError(f"data.label_fraction maps variable names to fractions; {name!r} is not a name")
        if isinstance(f, bool) or not isinstance(f, (int, float)):
            raise ValueError(f"{key} = {f!r} is not a number; give the share of training labels kept, in (0, 1]")
        if not 0 < f <= 1:
            raise ValueError(f"{key} = {f!r} must lie in (0, 1]: the share of training labels kept (1 = all)")
        out[name] = float(f)
    return out if isinstance(value, dict) else out[None]


@dataclass
class TrainConfig:
    seed: int = cfg.param(0, "seed of initialisation, data order and noise")
    batch_size: int = cfg.param(32, "images per step and process")
    lr: float = cfg.param(2e-4, "AdamW learning rate")
    lr_warmup_steps: int = cfg.param(100, "linear learning-rate warm-up")
    lr_schedule: Literal["constant", "cosine"] = cfg.param(
        "constant", "after the warm-up: constant, or a cosine decay to lr * lr_final at max_steps")
    lr_final: float = cfg.param(0.1, "the cosine schedule's last learning rate, as a share of lr")
    weight_decay: float = cfg.param(0.0, "AdamW weight decay")
    grad_clip: float = cfg.param(1.0, "gradient norm clip (0 = off)")
    ema_decay: float = cfg.param(0.999, "decay of the EMA weights that are exported and sampled")
    gamma_max: float = cfg.param(1.0, "final weight gamma of the KL and label-prior terms")
    gamma_warmup_steps: int = cfg.param(1000, "steps over which gamma rises linearly from 0 to gamma_max")
    max_steps: int = cfg.param(10000, "stop after this many optimiser steps")
    max_minutes: float | None = cfg.param(None, "stop after this much wall time (null = no limit)")
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = cfg.param(
        "no", "accelerate mixed precision; auto: bf16 where the hardware computes it natively (a CUDA GPU with bf16, "
              "a CPU with AMX or AVX-512 BF16), else no (an emulated bf16 is many times slower)")
    cpu: bool = cfg.param(False, "train on the CPU even when a GPU is present")
    compile: bool = cfg.param(False, "torch.compile the UNet: 1.17x on 2 CPU cores for the Pendulum config at an "
                                     "unchanged loss, after a minute of compiling (docs/performance.md)")
    init_from: str | None = cfg.param(
        None, "fine-tuning: a model folder (a shipped model, a run, anything save_pretrained wrote) whose weights "
              "start this run instead of a random initialisation. Its architecture must be this run's (only the "
              "loss-only model keys may differ); step, optimiser and EMA start afresh (the EMA at those weights), and "
              "the label mechanisms are fit again on this run's labels. A resumed run ignores it")
    freeze: list[str] = cfg.param(
        [], "parts of the model that keep their weights: any of encoder, causal_layer, unet (with its null "
            "condition); with init_from, e.g. [unet] fine-tunes the encoder alone while the decoder stays the one it "
            "was. The loss still flows through a frozen part")
    mechanism_steps: int = cfg.param(2000, "full-batch Adam steps of each label mechanism's likelihood fit, made "
                                           "on the labelled training rows before the first step (seconds)")
    log_every: int = cfg.param(50, "steps between rows of metrics.csv")
    log_with: str | list[str] | None = cfg.param(
        None, "experiment trackers that also get metrics.csv's rows (the loss terms, gamma, learning rate, img/s), "
              "the sample grids and the resolved config: any that accelerate supports, e.g. tensorboard (pip install "
              "'causaldiffae[track]'), wandb, mlflow; a name, a list or a comma-separated string. File-based ones "
              "write under RUN/logs/train; a resumed run appends there and TensorBoard hides the steps logged after "
              "the checkpoint. null = metrics.csv only (always written)")
    sample_every: int = cfg.param(1000, "steps between sample and reconstruction grids (0 = only at the end)")
    checkpoint_every: int = cfg.param(1000, "steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = cfg.param(2, "how many recent checkpoints to keep")
    grid_images: int = cfg.param(8, "test images in each grid")
    grid_steps: int = cfg.param(20, "DDIM steps used for the grids")

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based): linear warm-up over lr_warmup_steps, then
        constant or a cosine from lr down to lr * lr_final at max_steps."""
        warmup = max(1, self.lr_warmup_steps)
        if step + 1 < warmup or self.lr_schedule == "constant":
            return self.lr * min(1.0, (step + 1) / warmup)
        progress = min(1.0, (step + 1 - warmup) / max(1, self.max_steps - warmup))
        return self.lr * (self.lr_final + (1 - self.lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))

    def __post_init__(self) -> None:
        positive = ["batch_size", "max_steps", "mechanism_steps", "log_every", "keep_checkpoints", "grid_images",
                    "grid_steps"]
        bad = [k for k in positive if getattr(self, k) < 1]
        bad += [k for k in ["lr", "ema_decay"] if not getattr(self, k) > 0]
        bad += ["lr_final"] if not 0 <= self.lr_final <= 1 else []
        bad += [k for k in ["lr_warmup_steps", "weight_decay", "grad_clip", "gamma_max", "gamma_warmup_steps",
                            "sample_every", "checkpoint_every"] if getattr(self, k) < 0]
        if self.ema_decay >= 1 or (self.max_minutes is not None and self.max_minutes <= 0):
            bad += ["ema_decay" if self.ema_decay >= 1 else "max_minutes"]
        if bad:
            raise ValueError("train config: invalid " + ", ".join(f"train.{k}={getattr(self, k)!r}" for k in bad))
        unknown = [p for p in self.freeze if p not in FREEZABLE]
        if unknown or len(set(self.freeze)) == len(FREEZABLE):
            raise ValueError(f"train.freeze = {self.freeze!r}: name some of {', '.join(FREEZABLE)}"
                             + (f" ({', '.join(map(repr, unknown))} is not one)" if unknown else ", not all"))
        tracking.names(self.log_with, "train.log_with")  # the name is checked here; whether it is installed, by train


def _model_section_defaults() -> dict[str, Any]:
    return {f.name: cfg.default_of(f) for f in dataclasses.fields(ModelConfig) if f.name not in DERIVED_MODEL_KEYS}


@dataclass
class RunConfig:
    graph: str | dict | None = None
    """A graph file, an inline graph, or null for the dataset's own ``graph.yaml``."""
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=_model_section_defaults)
    """ModelConfig without graph, image_size and channels (they come from the graph and the data)."""
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        derived = [k for k in DERIVED_MODEL_KEYS if k in self.model]
        if derived:
            raise ValueError(f"model.{derived[0]} is not set in the model section: it comes from the "
                             f"{'graph' if derived[0] == 'graph' else 'data'} section")
        probe = cfg.from_dict(ModelConfig, self.model, "model")  # checks keys and types now, not at train time
        self.model = {k: v for k, v in cfg.to_dict(probe).items() if k not in DERIVED_MODEL_KEYS}

    def model_config(self, graph: dict, image_size: int, channels: int) -> ModelConfig:
        return cfg.from_dict(ModelConfig, {**self.model, "graph": graph, "image_size": image_size,
                                           "channels": channels}, "model")

    def to_dict(self) -> dict[str, Any]:
        return cfg.to_dict(self)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b=value`` to a nested dict; the value is parsed as YAML (numbers, booleans, lists, null)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects key=value (e.g. train.max_steps=100), got {assignment!r}")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ValueError(f"--set {key}: cannot parse the value {raw!r}") from None


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a run YAML (or start from defaults when ``path`` is None), apply overrides, validate everything."""
    data = _read_with_base(Path(path), ()) if path is not None else {}
    for assignment in overrides:
        apply_override(data, assignment)
    return cfg.from_dict(RunConfig, data, "config")


def _read_with_base(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A run YAML merged over the file its ``extends:`` names (relative to it), so baselines state only what differs."""
    data = cfg.load_yaml(path, "config file") or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a mapping with sections graph, data, model, train")
    data = copy.deepcopy(data)
    base = data.pop("extends", None)
    if base is None:
        return data
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ValueError(f"config {path}: 'extends' loops back to {base_path}")
    return _merge(_read_with_base(base_path, (*seen, path.resolve())), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def help_text() -> str:
    """Every config key with its default and meaning: the epilog of ``causaldiffae train --help``."""
    lines = ["config keys (set in the YAML or with --set section.key=value; 'extends: base.yaml' merges the file "
             "over another):",
             "  graph (null): path of a graph YAML, an inline graph, or null for the dataset's graph.yaml"]
    lines += cfg.describe(DataConfig, "data")
    lines += cfg.describe(ModelConfig, "model")
    lines += cfg.describe(TrainConfig, "train")
    return "\n".join(lines)

