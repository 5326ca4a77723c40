"""Training checkpoints: weights, EMA weights and optimiser state as safetensors, the rest as JSON.

Each checkpoint is a folder ``RUN/checkpoints/step-XXXXXXXX`` written under a temporary name and renamed,
so a killed run never leaves a half-written one; ``latest`` picks the newest complete folder. Only names of
exactly that form are checkpoints: anything else in ``checkpoints/`` is never read, counted or deleted.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.amp import GradScaler

from .. import config as cfg
from ..atomic import atomic_dir
from ..model import CausalDiffAE, load_state

STATE_NAME = "state.json"
#: The name of a checkpoint folder: ``step-`` and the step, zero-padded to at least 8 digits.
NAME = re.compile(r"step-(\d{8,})")


#: Model keys that shape only the training loss, not the weights or what they compute: a fine-tuning run
#: (train.init_from) may change them.
LOSS_ONLY_KEYS = ("dropout", "min_snr_gamma", "timestep_sampling", "timestep_loc", "timestep_scale", "kl_weight",
                  "label_weight", "p_uncond")


class CorruptCheckpoint(ValueError):
    """A checkpoint whose files cannot be read (truncated, garbage, missing): resuming falls back past it."""


@dataclass
class TrainingState:
    step: int


def checkpoint_dir(run: Path) -> Path:
    return run / "checkpoints"


def checkpoints(run: Path) -> list[Path]:
    """The checkpoint folders of a run (names of the form ``step-XXXXXXXX`` only), newest first."""
    folder = checkpoint_dir(run)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if NAME.fullmatch(p.name) and p.is_dir()), key=step_of, reverse=True)


def latest(run: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    return next((p for p in checkpoints(run) if (p / STATE_NAME).is_file()), None)


def step_of(path: Path) -> int:
    """The training step of a checkpoint folder ``step-XXXXXXXX``."""
    match = NAME.fullmatch(path.name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (step-XXXXXXXX)")
    return int(match[1])


def save(run: Path, step: int, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, keep: int,
         scaler: GradScaler | None = None) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the ``keep`` newest. The fp16 loss scaler's state
    (``scaler``, a handful of numbers) goes into state.json, so a resumed fp16 run keeps its scale."""
    target = checkpoint_dir(run) / f"step-{step:08d}"
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    meta = {"step": step, "optimizer": opt_meta}
    if scaler is not None and scaler.is_enabled():
        meta["scaler"] = scaler.state_dict()
    with atomic_dir(target) as tmp:
        save_file(_cpu(model.state_dict()), str(tmp / "model.safetensors"))
        save_file(_cpu(ema.state_dict()), str(tmp / "ema.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / STATE_NAME).write_text(json.dumps(meta, indent=1))
    for old in checkpoints(run)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def resume(run: Path, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
           warn: Callable[[str], None] | None = None, scaler: GradScaler | None = None) -> int:
    """Load the newest intact checkpoint of ``run`` and return its step; corrupt newer ones are skipped, and
    ``warn`` is told which and why."""
    found = checkpoints(run)
    if not found:
        raise nothing_to_resume(run)
    skipped: list[str] = []
    for path in found:
        try:
            step = load(path, model, ema, optimizer, scaler).step
        except CorruptCheckpoint as err:
            skipped.append(str(err))
            continue
        if skipped and warn is not None:
            warn(f"{'; '.join(skipped)}; resuming from the newest intact one, {path.name} (step {step})")
        return step
    raise CorruptCheckpoint(f"no intact checkpoint in {checkpoint_dir(run)} to resume from: {'; '.join(skipped)}")


def nothing_to_resume(run: Path) -> ValueError:
    """The error for resuming a folder without checkpoints, saying what the folder holds instead."""
    what = "stopped before its first checkpoint" if (run / "config.yaml").is_file() else "is not a training run"
    return ValueError(f"{run} holds no checkpoint to resume from ({checkpoint_dir(run)}/step-XXXXXXXX): it {what}; "
                      "drop --resume to start a run there (with --overwrite if it holds files)")


def load(path: Path, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
         scaler: GradScaler | None = None) -> TrainingState:
    """Restore model, EMA, optimiser and (when both the checkpoint and the run have one) the fp16 loss scaler in
    place from a checkpoint folder; errors name the bad file."""
    meta = _read_state(path)
    model_state, ema_state, opt_tensors = (_read(path / name) for name in
                                           ("model.safetensors", "ema.safetensors", "optimizer.safetensors"))
    load_state(model, model_state, path / "model.safetensors")
    load_state(ema, ema_state, path / "ema.safetensors")
    try:
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, meta["optimizer"]))
    except (KeyError, ValueError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} has an optimiser state that does not fit this model: {err}") from None
    if scaler is not None and scaler.is_enabled() and "scaler" in meta:
        scaler.load_state_dict(meta["scaler"])
    return TrainingState(step=meta["step"])


def _read_state(path: Path) -> dict:
    """state.json: a mapping with the folder's step and the optimiser's JSON part, or CorruptCheckpoint."""
    file = path / STATE_NAME
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpoint(f"corrupt checkpoint {path.name}: {file} is unreadable ({err})") from None
    problem = None
    if not isinstance(meta, dict):
        problem = f"holds a {type(meta).__name__}, not a mapping"
    elif type(meta.get("step")) is not int:
        problem = "has no integer step" if "step" not in meta else f"has step {meta['step']!r}, not an integer"
    elif meta["step"] != step_of(path):
        problem = f"says step {meta['step']}, but the folder is {path.name}"
    elif not (isinstance(meta.get("optimizer"), dict) and isinstance(meta["optimizer"].get("scalars"), dict)
              and isinstance(meta["optimizer"].get("param_groups"), list)):
        problem = "has no optimizer section with param_groups and scalars"
    elif "scaler" in meta and not (isinstance(meta["scaler"], dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in meta["scaler"].values())):
        problem = "has a scaler section that is not a mapping of numbers"
    if problem:
        raise CorruptCheckpoint(f"corrupt checkpoint {path.name}: {file} {problem}")
    return meta


def _read(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (OSError, SafetensorError, ValueError) as err:
        raise CorruptCheckpoint(f"corrupt checkpoint {file.parent.name}: file {file} is unreadable ({err})") from None


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimiser state_dict -> (tensors named 'param.key', JSON-able rest) so nothing needs pickle."""
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def initialise(model: CausalDiffAE, folder: str | Path) -> None:
    """Load a saved model's weights into ``model`` (train.init_from): refused, naming every difference, when the
    two configs differ in anything but LOSS_ONLY_KEYS, since the same tensor shapes could still mean other
    computations (another graph's normalisation, epsilon against v)."""
    source = CausalDiffAE.from_pretrained(folder)
    own, theirs = cfg.to_dict(model.config), cfg.to_dict(source.config)
    differ = [k for k in own if k not in LOSS_ONLY_KEYS and own[k] != theirs.get(k)]
    if differ:
        listed = "; ".join(f"model.{k}: {theirs.get(k)!r} there, {own[k]!r} here" for k in differ)
        raise ValueError(f"train.init_from {folder} is another model than this run's ({listed}); fine-tuning "
                         f"needs the same architecture: set those keys as the folder's model_config.json has them")
    model.load_state_dict(source.state_dict())
