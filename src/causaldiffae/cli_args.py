"""The command line's argument types and value parsers: text in, a checked value out, or an error naming the flag.

The argparse types (``positive_int``, ``image_size``, ``depth``, ``eta``, ``seed_list``, ``fraction_list``) raise
``argparse.ArgumentTypeError``: argparse prints the usage and exits with code 2. The parsers the command handlers
call (``parse_do``, ``parse_index``, ``floats``, ``pair``) raise ``ValueError``, which ``cli.main`` prints as one
line. Light on purpose (no torch): ``--help`` imports this module.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

#: Most values one ``--do NAME=START:STOP:COUNT`` sweeps: each is a column of the grid.
MAX_SWEEP = 1000


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0, "a whole number, 0 or more")


def _whole_number(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def level(text: str) -> float:
    """A significance level in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text}")
    return value


def image_size(text: str) -> int:
    value = positive_int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8 pixels, got {text}")
    return value


def depth(text: str) -> float:
    """An inversion depth in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


# argparse names the type in its error for a value that is no number ("invalid _depth value: 'x'"): the name the
# command line has always shown there.
depth.__name__ = "_depth"


def eta(text: str) -> float:
    """The noise share of stochastic DDIM, in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM's noise), got {text}")
    return value


def seed_list(text: str) -> list[int]:
    """Distinct comma-separated integers, e.g. 0,1,2."""
    from .metrics.settings import parse_seeds

    try:
        seeds = parse_seeds(text, "--train-seeds")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"takes distinct comma-separated integers, got {text!r}")
    return list(seeds)


def fraction_list(text: str) -> list[float]:
    """Comma-separated shares in (0, 1], e.g. 0.3,0.1,0.03."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated numbers in (0, 1], got {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"takes comma-separated numbers in (0, 1], got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    """Comma-separated names, empty ones left out."""
    return [n for n in text.split(",") if n]


def floats(text: str, flag: str) -> list[float]:
    """Comma-separated finite numbers, e.g. 0,1,2.5."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} expects numbers separated by commas, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{flag} takes finite numbers, got {text!r}")
    return values


def pair(text: str, flag: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH)."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"{flag} expects NAME=PATH, got {text!r}")
    return key, value


def parse_do(items: Sequence[str], graph: Any) -> tuple[dict[str, float], tuple[str, list[float]] | None]:
    """``name=value`` pairs and at most one ``name=start:stop:count`` sweep -> (fixed values, sweep)."""
    fixed: dict[str, float] = {}
    swept: tuple[str, list[float]] | None = None
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--do expects name=value or name=start:stop:count, got {item!r}")
        var = graph[name.strip()]  # raises listing the valid variables
        try:
            parts = [float(p) for p in text.split(":")]
        except ValueError:
            raise ValueError(f"--do {var.name}: {text!r} is not a number or start:stop:count") from None
        if not all(math.isfinite(p) for p in parts):
            raise ValueError(f"--do {var.name}: {text!r} holds a value that is not a finite number")
        if len(parts) == 3:
            if swept is not None:
                raise ValueError("only one --do may sweep a range (start:stop:count)")
            start, stop, count = parts
            if count < 1 or count != int(count):
                raise ValueError(f"--do {var.name}: count must be a positive integer, got {text!r}")
            if count > MAX_SWEEP:
                raise ValueError(f"--do {var.name}={text}: a sweep of {count:,.0f} values would make as many grid "
                                 f"columns; sweep at most {MAX_SWEEP:,}")
            values = [start + (stop - start) * i / max(int(count) - 1, 1) for i in range(int(count))]
            if len(values) > 1:
                values[-1] = stop  # exactly, whatever the rounding
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"--do {var.name}: the range {text!r} overflows; give a narrower one")
            swept = (var.name, values)
        elif len(parts) == 1:
            fixed[var.name] = parts[0]
        else:
            raise ValueError(f"--do {var.name}: {text!r} is not a number or start:stop:count")
    checked = [*fixed.items(), *((swept[0], v) for v in swept[1])] if swept else list(fixed.items())
    for name, value in checked:
        rng = graph[name].range
        if rng is not None and not rng[0] <= value <= rng[1]:
            print(f"causaldiffae: warning: {name}={value:g} is outside the training range [{rng[0]:g}, "
                  f"{rng[1]:g}]: an extrapolation", file=sys.stderr)
    return fixed, swept


def parse_index(text: str, n: int) -> list[int]:
    """``3``, ``0:8`` or ``0,5,7`` -> indices into a split of n rows."""
    try:
        if ":" in text:
            start, stop = (int(p) if p else None for p in text.split(":", 1))
            idx = list(range(n))[slice(start, stop)]
        else:
            idx = [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"--index expects N, START:STOP or N,M,..., got {text!r}") from None
    bad = [i for i in idx if not 0 <= i < n]
    if bad or not idx:
        raise ValueError(f"--index {text} selects no rows or rows outside the split's {n} images: {bad}")
    return idx
