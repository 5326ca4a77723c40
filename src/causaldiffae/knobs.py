"""A model's own counterfactual knobs: the inversion depth, guidance weight and DDIM steps chosen for it.

The best depth and weight differ between models (the shipped Pendulum model: 0.5 / 1.5; the epsilon-prediction
Pendulum model shipped before it: 0.4 / 1.5; the shipped MorphoMNIST model: 0.7 / 1), and so do the fewest DDIM
steps that keep a model's counterfactual quality, so they travel with the weights: ``knobs.json`` beside
``model.safetensors``, written by ``causaldiffae tune RUN --apply`` and read by ``CausalDiffAE.from_pretrained``.
A call or command that names a depth, weight or number of steps uses it; one that names none uses the model's
knobs, and a model without ``knobs.json`` (or a file without "steps") the global defaults below.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .atomic import write_text
from .config import read_utf8

#: Inversion depth and guidance weight when neither the call nor the model names one, chosen on Pendulum's
#: validation split (never test) by `causaldiffae tune` with the shipped model: the lowest error to the true
#: counterfactual of 15 (depth, guidance) cells, 64 images, 50 steps (true-cf L1 2.89 at 0.5 / 1 against 2.96 at
#: 0.4 / 1.5 and 3.48 at 1.0 / 1; docs/results/pendulum/tune/tune.md). Tune them for your own model.
DEFAULT_DEPTH = 0.5
DEFAULT_GUIDANCE = 1.0
#: DDIM steps of the inversion and of the decoding when neither the call nor the model names them: the number every
#: shipped model's knobs were tuned and evaluated at, so a knobs.json written before steps were a knob keeps them.
DEFAULT_STEPS = 50
KNOBS_NAME = "knobs.json"
#: How x_T is abducted: DDIM inversion plus the residual of each factual decoding step ("exact": do={} reconstructs
#: at any number of steps; diffusion/ddim.py `invert_exact`), plain DDIM inversion ("ddim", the paper's), or the
#: reference code's fresh noise ("noise", for comparison).
Abduction = Literal["exact", "ddim", "noise"]
#: The abduction when none is named: "exact" gives a lower error to the true counterfactual than "ddim" at every
#: number of steps measured on both datasets' validation splits (docs/performance.md), for one more network call.
DEFAULT_ABDUCTION: Abduction = "exact"
#: The decoder of x_T: DDIM (first order) or DPM-Solver++(2M) (second order, the same calls; diffusion/dpm_solver.py).
Solver = Literal["ddim", "dpm++2m"]


def check_decoding(abduction: str, solver: str) -> None:
    """A known abduction and solver that go together (the "exact" abduction's residuals belong to DDIM's steps);
    anything else is refused by name."""
    for name, value, kind in (("abduction", abduction, Abduction), ("solver", solver, Solver)):
        if value not in typing.get_args(kind):
            raise ValueError(f"{name} must be one of {list(typing.get_args(kind))}, got {value!r}")
    if abduction == "exact" and solver != "ddim":
        raise ValueError(f"solver {solver!r} cannot decode the 'exact' abduction, whose residuals belong to DDIM "
                         "steps: use solver 'ddim', or abduction 'ddim'")


@dataclass(frozen=True)
class Knobs:
    """Inversion depth in (0, 1], guidance weight w >= 0 and DDIM steps >= 1, and where they came from."""

    depth: float = DEFAULT_DEPTH
    guidance: float = DEFAULT_GUIDANCE
    steps: int = DEFAULT_STEPS
    chosen_by: str = "the global defaults (tuned on Pendulum's validation split)"

    def __post_init__(self) -> None:
        for name, value in (("depth", self.depth), ("guidance", self.guidance)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"knobs: {name} must be a finite number, got {value!r}")
        if not 0 < self.depth <= 1:
            raise ValueError(f"knobs: depth must lie in (0, 1], got {self.depth}")
        if self.guidance < 0:
            raise ValueError(f"knobs: guidance must be >= 0, got {self.guidance}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"knobs: steps must be a positive integer (DDIM steps), got {self.steps!r}")

    def resolve(self, depth: float | None, guidance: float | None) -> tuple[float, float]:
        """The given depth and weight, or these knobs where one is None."""
        return (self.depth if depth is None else depth), (self.guidance if guidance is None else guidance)

    def resolve_steps(self, steps: int | None) -> int:
        """The given number of DDIM steps, or these knobs' where it is None."""
        return self.steps if steps is None else steps


def read_knobs(directory: str | Path, num_timesteps: int | None = None) -> Knobs:
    """``directory/knobs.json``, or the global defaults when the folder has none. Checked here, as every file is
    when it loads, so that no query fails later over it: UTF-8 JSON, the known keys, their types and ranges, and
    (with the model's ``num_timesteps``, else the T of the folder's model config when it has one) a depth and
    steps that make a DDIM trajectory of the model. Every message names the file and the key."""
    path = Path(directory) / KNOBS_NAME
    if path.is_dir():
        raise ValueError(f"{path} is a folder where a file is needed (a model's knobs); remove it")
    if not path.exists():
        if path.is_symlink():
            raise ValueError(f"{path} is a link to nothing ({path.readlink()}); remove it or point it at a file")
        return Knobs()
    try:
        payload: Any = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupt knobs file {path}: {err}") from None
    if not isinstance(payload, dict) or not {"depth", "guidance"} <= set(payload):
        raise ValueError(f"{path} must be a JSON object with 'depth' and 'guidance'")
    unknown = set(payload) - {"depth", "guidance", "steps", "chosen_by"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (expected depth, guidance, steps, chosen_by)")
    chosen_by = payload.get("chosen_by", KNOBS_NAME)
    if not isinstance(chosen_by, str):
        raise ValueError(f"{path}: chosen_by must be a text, got {chosen_by!r}")
    try:
        knobs = Knobs(payload["depth"], payload["guidance"], payload.get("steps", DEFAULT_STEPS), chosen_by)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if num_timesteps is None and (path.parent / "model_config.json").is_file():
        from .model import load_config  # here: the model module reads knobs through this one

        num_timesteps = load_config(path.parent).num_timesteps
    if num_timesteps is not None:
        _check_trajectory(knobs, num_timesteps, path, "steps" in payload)
    return knobs


def _check_trajectory(knobs: Knobs, num_timesteps: int, path: Path, own_steps: bool) -> None:
    """A depth that spans at least one of the model's T timesteps and, where the file names its steps, no more
    steps than it spans (the DDIM trajectory of ``diffusion.ddim``: round(depth * T) timesteps, one step each at
    most). A file without steps has the global default, as a model without knobs.json has; a call names others."""
    span = round(knobs.depth * num_timesteps)
    if span < 1:
        raise ValueError(f"{path}: depth {knobs.depth!r} spans no timestep of this model's {num_timesteps} "
                         f"(round(depth x {num_timesteps}) = 0); use a depth of at least {1 / num_timesteps:g}")
    if own_steps and knobs.steps > span:
        raise ValueError(f"{path}: steps {knobs.steps} is more than the {span} timesteps that depth {knobs.depth:g} "
                         f"spans of this model's {num_timesteps} (round(depth x T)); use at most {span}")


def write_knobs(directory: str | Path, knobs: Knobs) -> Path:
    """Write ``directory/knobs.json`` atomically; returns its path."""
    path = Path(directory) / KNOBS_NAME
    write_text(path, json.dumps(asdict(knobs), indent=1) + "\n")
    return path
