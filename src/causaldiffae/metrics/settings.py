"""What an evaluation run does: one dataclass, from which `evaluate`'s and `reproduce`'s flags are generated.

Light on purpose (no torch): the command line builds its parser from these fields, so each default and help
line lives here once.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from typing import Any

from .. import config as cfg
from ..knobs import (
    DEFAULT_ABDUCTION,
    DEFAULT_DEPTH,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    KNOBS_NAME,
    Abduction,
    Knobs,
    Solver,
    check_decoding,
)
from ..precision import Precision, check_precision

#: How a flag whose default is the model's own names it.
MODEL_KNOBS = f"the model's own, from its {KNOBS_NAME}, else"
SOLVER_HELP = ("decoder: ddim, or dpm++2m (second order at the same network calls; the inversion stays DDIM; "
               "needs --abduction ddim)")
PRECISION_HELP = ("of the UNet at inference: fp32, or bf16 autocast (faster only where bf16 is native: GPUs, CPUs "
                  "with AMX or AVX-512 BF16; default fp32)")
ABDUCTION_HELP = ("x_T abduction: exact (DDIM inversion keeping each factual decoding step's residual, so do={} "
                  "reconstructs at any steps), ddim (plain DDIM inversion) or noise (the reference's fresh noise)")


@dataclass
class Settings:
    """What an evaluation run does; saved with its results."""

    n: int = cfg.flag(1000, "interventions per seed")
    seeds: tuple[int, ...] = cfg.flag((0, 1, 2), "comma-separated seeds")
    steps: int | None = cfg.flag(None, f"network calls of the inversion, and of the decoding ({MODEL_KNOBS} "
                                       f"{DEFAULT_STEPS})")
    guidance: float | None = cfg.flag(None, f"guidance weight w ({MODEL_KNOBS} {DEFAULT_GUIDANCE})")
    depth: float | None = cfg.flag(None, f"inversion depth in (0, 1] ({MODEL_KNOBS} {DEFAULT_DEPTH})")
    abduction: Abduction = cfg.flag(DEFAULT_ABDUCTION, ABDUCTION_HELP)
    solver: Solver = cfg.flag("ddim", SOLVER_HELP)
    precision: Precision = cfg.flag("fp32", PRECISION_HELP)
    known_labels: bool = cfg.flag(False, "abduct each child's noise from the test split's factual labels instead of "
                                         "the model's reading of the image (as the 2024 benchmark gives its models "
                                         "the factual parents)")
    batch_size: int = cfg.flag(50, "images per abduction (50 is the fastest on a CPU; a GPU wants a few hundred)")
    subset: int = cfg.flag(50, "images of reversibility, the 10-cycle composition and the guidance sweep")
    cycles: int = 10
    weights: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    dci_samples: int = 2000
    examples: int = 6
    """Images per variable in the example grids (seed of the first run only)."""

    def __post_init__(self) -> None:
        steps_bad = self.steps is not None and self.steps < 1
        if self.n < 1 or self.batch_size < 1 or self.subset < 0 or self.cycles < 1 or steps_bad:
            raise ValueError(f"evaluation settings must be positive: n={self.n}, batch_size={self.batch_size}, "
                             f"subset={self.subset}, cycles={self.cycles}, steps={self.steps}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if self.guidance is not None and not math.isfinite(self.guidance):
            raise ValueError(f"--guidance must be a finite number, got {self.guidance}")
        check_decoding(self.abduction, self.solver)
        check_precision(self.precision)

    def resolved(self, knobs: Knobs) -> Settings:
        """These settings with a depth, weight or number of steps of None replaced by ``knobs``': what a run
        records is what it used."""
        depth, guidance = knobs.resolve(self.depth, self.guidance)
        return replace(self, depth=depth, guidance=guidance, steps=knobs.resolve_steps(self.steps))

    def flags(self) -> list[str]:
        """The command-line flags that reproduce these settings (a None depth, weight or steps is left out: the
        run's own knobs; a switch appears when it is on)."""
        out = []
        for field in cfg.flag_fields(Settings):
            value = getattr(self, field.name)
            if isinstance(value, bool):
                out += [cfg.option(field)] if value else []
            elif value is not None:
                out += [cfg.option(field), ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
        return out


def parse_seeds(text: str, flag: str = "--seeds") -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2) with a clear error naming ``flag``."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError(f"{flag} is empty")
    return seeds


def add_flags(parser: argparse.ArgumentParser, types: dict[str, Any]) -> None:
    """One flag per flagged field of Settings (``config.add_flags``); ``types`` maps a field to its argparse
    ``type`` (a checker such as positive integers) where the plain string is not enough."""
    cfg.add_flags(parser, Settings, types)


def from_flags(args: argparse.Namespace) -> Settings:
    """Settings from the parsed flags of ``add_flags``."""
    values = {field.name: getattr(args, field.name) for field in cfg.flag_fields(Settings)}
    values["seeds"] = parse_seeds(values["seeds"])
    return Settings(**values)
