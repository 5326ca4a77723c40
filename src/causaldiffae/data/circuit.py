"""CausalCircuit (Brehmer et al., NeurIPS 2022): a robot arm pressing buttons that light red, green, blue.

Qualcomm's release is a set of ``.npz`` files, each with ``imgs`` (N, 2) JPEG bytes of 512x512 renders and
``original_latents`` (N, 2, 4) = (red, green, blue, arm) before and after a random intervention. We keep the
pre-intervention element, decode and resize it, and write the one dataset layout. No data ships with us.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..graph import CausalGraph
from .base import write_dataset

LATENT_ORDER = ("red", "green", "blue", "arm")  # column order of original_latents
GRAPH: dict = {
    "variables": [
        {"name": "arm", "description": "position of the robot arm along its arc"},
        {"name": "blue", "description": "intensity of the blue light"},
        {"name": "green", "description": "intensity of the green light"},
        {"name": "red", "description": "intensity of the red light"},
    ],
    "edges": [["arm", "blue"], ["arm", "green"], ["arm", "red"], ["blue", "red"], ["green", "red"]],
}


def read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(JPEG bytes of the pre-intervention images (N,), latents (N, 4) in LATENT_ORDER) of one release file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            imgs, latents = data["imgs"], data["original_latents"]
    except FileNotFoundError:
        raise FileNotFoundError(f"CausalCircuit file not found: {path}") from None
    except KeyError as err:
        raise ValueError(f"{path} is not a CausalCircuit file: no array {err} (needs imgs, original_latents)") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .npz file: {err}") from None
    if imgs.ndim != 2 or latents.ndim != 3 or latents.shape[1:] != (2, 4) or len(imgs) != len(latents):
        raise ValueError(f"{path}: expected imgs (N, 2) and original_latents (N, 2, 4), got {imgs.shape} "
                         f"and {latents.shape}")
    return imgs[:, 0], latents[:, 0].astype(np.float64)


def split_of(path: Path) -> str | None:
    """The split a release file belongs to, from its name (train / val / test), or None."""
    for split, pattern in (("train", r"train"), ("val", r"val"), ("test", r"test")):
        if re.search(pattern, path.stem, re.IGNORECASE):
            return split
    return None


def convert(files: Sequence[str | Path], out: str | Path, size: int = 128, test_fraction: float = 0.2,
            seed: int = 0) -> Path:
    """Convert release files to our layout. Files named *train*/*val*/*test* keep that split; the rows of
    other files are split at random (seeded) with ``test_fraction`` going to test."""
    if not files:
        raise ValueError("give at least one CausalCircuit .npz file")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    blobs: list[bytes] = []
    for path in map(Path, files):
        jpegs, latents = read_npz(path)
        split = split_of(path)
        splits = [split] * len(jpegs) if split else np.where(rng.random(len(jpegs)) < test_fraction, "test", "train")
        for i, (blob, values, s) in enumerate(zip(jpegs, latents, splits, strict=True)):
            row: dict[str, str | float] = {"file": f"{path.stem}-{i:06d}.png", "split": str(s)}
            row.update({name: float(v) for name, v in zip(LATENT_ORDER, values, strict=True)})
            rows.append(row)
            blobs.append(bytes(blob))
    return write_dataset(out, CausalGraph.from_dict(GRAPH), rows, _decoded(blobs, rows, size))


def _decoded(blobs: list[bytes], rows: list[dict], size: int) -> Iterator[np.ndarray]:
    for blob, row in zip(blobs, rows, strict=True):
        try:
            with Image.open(io.BytesIO(blob)) as img:
                yield np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
        except OSError as err:
            raise ValueError(f"image for {row['file']} is not a decodable JPEG: {err}") from None
