"""Image grids as PNG: what people look at after training and for counterfactuals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .atomic import atomic_path


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the [-1, 1] scale that the networks and the diffusion process work in."""
    return images * 2 - 1


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """The networks' [-1, 1] scale -> pixels, clamped to [0, 1] (a decoded image may overshoot)."""
    return ((images + 1) / 2).clamp(0, 1)


def from_uint8(image: np.ndarray | Image.Image) -> torch.Tensor:
    """One 8-bit image (H, W) or (H, W, C), a numpy array or a PIL image, as float (C, H, W) in [0, 1]."""
    array = np.array(image, dtype=np.float32)  # a copy: the source may be read-only
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array).permute(2, 0, 1) / 255


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) floats in [0, 1] -> (B, H, W, C) uint8 (C = 1 squeezed later by the grid)."""
    arr = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return arr.transpose(0, 2, 3, 1)


def heat(values: torch.Tensor) -> np.ndarray:
    """Values (..., H, W) in [0, 1] (clipped) as RGB uint8 (..., H, W, 3), black -> red -> yellow -> white: the
    colours of difference and spread maps."""
    d = values.detach().float().clamp(0, 1).cpu().numpy()
    rgb = np.stack([np.clip(3 * d, 0, 1), np.clip(3 * d - 1, 0, 1), np.clip(3 * d - 2, 0, 1)], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def grid(rows: Sequence[torch.Tensor], row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
         pad: int = 2, scale: int | None = None) -> Image.Image:
    """Rows of images (each (B, C, H, W) in [0, 1], same B) -> one RGB grid, labels left of rows and above
    columns; small images are enlarged (nearest neighbour) to about 96 px unless ``scale`` is given."""
    arrays = [to_uint8(r) for r in rows]
    _, h, w, c = arrays[0].shape
    scale = scale or max(1, 96 // max(h, w))
    h, w = h * scale, w * scale
    left = 8 + 6 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    top = 14 if col_labels else 0
    columns = max(a.shape[0] for a in arrays)
    canvas = Image.new("RGB", (left + columns * (w + pad) + pad, top + len(arrays) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(col_labels):
        draw.text((left + pad + j * (w + pad), 2), text, fill=(0, 0, 0))
    for r, arr in enumerate(arrays):
        y = top + pad + r * (h + pad)
        if r < len(row_labels):
            draw.text((4, y + h // 2 - 5), row_labels[r], fill=(0, 0, 0))
        for i in range(arr.shape[0]):
            tile = Image.fromarray(arr[i, :, :, 0] if c == 1 else arr[i]).convert("RGB")
            canvas.paste(tile.resize((w, h), Image.Resampling.NEAREST), (left + pad + i * (w + pad), y))
    return canvas


def save_grid(path: str | Path, rows: Sequence[torch.Tensor], row_labels: Sequence[str] = (),
              col_labels: Sequence[str] = (), scale: int | None = None) -> Path:
    """Write a grid PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        grid(rows, row_labels, col_labels, scale=scale).save(tmp, format="PNG")
    return path


def save_heat_grid(path: str | Path, rows: Sequence[torch.Tensor], top: float, scale_label: str,
                   row_labels: Sequence[str] = (), col_labels: Sequence[str] = ()) -> Path:
    """Maps (each row (B, H, W), values >= 0) as a grid of heat colours from 0 to ``top`` (``heat``), with a colour
    bar under it that says what the colours mean: "0", ``top`` and ``scale_label`` (the quantity and its units).
    Written atomically."""
    if not top > 0:
        raise ValueError(f"the top of a heat map's scale must be positive, got {top}")
    tiles = [torch.from_numpy(heat(r / top)).permute(0, 3, 1, 2).float() / 255 for r in rows]
    maps = grid(tiles, row_labels, col_labels)
    bar_width = min(256, maps.width - 16)
    canvas = Image.new("RGB", (max(maps.width, 8 + 6 * len(scale_label)), maps.height + 44), "white")
    canvas.paste(maps, (0, 0))
    ramp = heat(torch.linspace(0, 1, bar_width)[None].expand(12, -1))
    canvas.paste(Image.fromarray(ramp), (8, maps.height + 4))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, maps.height + 17), "0", fill=(0, 0, 0))
    top_text = f"{top:.3g}"
    draw.text((8 + bar_width - 6 * len(top_text), maps.height + 17), top_text, fill=(0, 0, 0))
    draw.text((8, maps.height + 30), scale_label, fill=(0, 0, 0))
    with atomic_path(Path(path)) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
