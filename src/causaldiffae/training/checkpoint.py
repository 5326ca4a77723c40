"""Training checkpoints: weights, EMA weights and optimiser state as safetensors, the rest as JSON.

Each checkpoint is a folder ``RUN/checkpoints/step-XXXXXXXX`` written under a temporary name and renamed,
so a killed run never leaves a half-written one; ``latest`` picks the newest complete folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_dir
from ..model import load_state

STATE_NAME = "state.json"


@dataclass
class TrainingState:
    step: int


def checkpoint_dir(run: Path) -> Path:
    return run / "checkpoints"


def latest(run: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    folder = checkpoint_dir(run)
    done = sorted(p for p in folder.glob("step-*") if (p / STATE_NAME).is_file()) if folder.is_dir() else []
    return done[-1] if done else None


def step_of(path: Path) -> int:
    """The training step of a checkpoint folder ``step-XXXXXXXX``."""
    return int(path.name.removeprefix("step-"))


def save(run: Path, step: int, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, keep: int) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the ``keep`` newest."""
    target = checkpoint_dir(run) / f"step-{step:08d}"
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    with atomic_dir(target) as tmp:
        save_file(_cpu(model.state_dict()), str(tmp / "model.safetensors"))
        save_file(_cpu(ema.state_dict()), str(tmp / "ema.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / STATE_NAME).write_text(json.dumps({"step": step, "optimizer": opt_meta}, indent=1))
    for old in sorted(checkpoint_dir(run).glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load(path: Path, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Restore model, EMA and optimiser in place from a checkpoint folder; errors name the bad file."""
    try:
        meta = json.loads((path / STATE_NAME).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"corrupt checkpoint file {path / STATE_NAME}: {err}") from None
    model_state, ema_state, opt_tensors = (_read(path / name) for name in
                                           ("model.safetensors", "ema.safetensors", "optimizer.safetensors"))
    load_state(model, model_state, path / "model.safetensors")
    load_state(ema, ema_state, path / "ema.safetensors")
    try:
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, meta["optimizer"]))
    except (KeyError, ValueError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} has an optimiser state that does not fit this model: {err}") from None
    return TrainingState(step=int(meta["step"]))


def _read(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (OSError, SafetensorError, ValueError) as err:
        raise ValueError(f"corrupt checkpoint file {file}: {err}") from None


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
