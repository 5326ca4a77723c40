"""The memory a request needs against what the machine has: refused up front with the estimate, never attempted.

A request whose results alone would fill more than half of its device's memory (``--n 100000000``, a sweep of
a billion values, ``train.batch_size=100000000``) ends in one line that says how much it needs, instead of an
allocation that the operating system kills or that swaps the machine to a halt. Work that only scales the
intermediate tensors is batched instead (``counterfactual.MAX_PIXELS_PER_CALL``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def budget(device: str | torch.device = "cpu") -> int | None:
    """Bytes of memory of ``device``: a GPU's total memory, else the host's physical memory (or the container's
    limit when lower); None where the platform does not say."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX (Windows)
        return None
    for path in _CGROUP_LIMITS:
        try:
            limit = int(path.read_text().strip())
        except (OSError, ValueError):  # absent, or "max"
            continue
        total = min(total, limit)
    return total


def check(nbytes: float, what: str, fix: str, device: str | torch.device = "cpu") -> None:
    """Refuse ``what`` when it needs more than half of ``device``'s memory: one line with both sizes and ``fix``."""
    total = budget(device)
    if total is not None and nbytes > total / 2:
        raise ValueError(f"{what} needs about {gib(nbytes)} of memory, more than half of the {gib(total)} of this "
                         f"machine's {torch.device(device).type.upper()}: {fix}")


def gib(nbytes: float) -> str:
    """Bytes as GiB for a message: 3 significant digits, thousands separated above 1,000."""
    value = nbytes / 2**30
    return f"{value:,.0f} GiB" if value >= 1000 else f"{value:.3g} GiB"
