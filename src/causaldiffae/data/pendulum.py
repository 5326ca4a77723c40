"""The Pendulum dataset: a pendulum lit by a sun casts a shadow on the ground.

The scene and its causal structure follow the synthetic generator introduced with CausalVAE
(Yang et al., "CausalVAE: Disentangled Representation Learning via Neural Structural Causal Models",
CVPR 2021). There, images are drawn with matplotlib; here they are rasterised with Pillow and numpy
using the same geometry (a 1x1 inch figure at ``size`` dpi with matplotlib's default axes box), so
the dataset and the ground-truth counterfactuals of its structural causal model can be generated on
the fly. Angles are in degrees; shadow length and position are in scene (data) units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..atomic import check_replaceable
from ..graph import CausalGraph
from .base import DATASET_MARKER, write_dataset

VARIABLES: tuple[str, ...] = ("angle", "light", "shadow_length", "shadow_position")
_SHADOWS = ("shadow_length", "shadow_position")

PIVOT = (10.0, 10.5)
ROD_LENGTH = 8.0  # pivot to bob centre
PENDULUM_REACH = 9.5  # pivot to the far edge of the bob, which bounds the shadow
BOB_RADIUS = 1.5
SUN_RADIUS = 3.0
SUN_HEIGHT = 20.5
GROUND = -0.5
MIN_SHADOW_LENGTH = 3.0
X_LIM = (0.0, 20.0)
Y_LIM = (-1.0, 21.0)
AXES_BOX = (0.125, 0.9, 0.11, 0.88)  # matplotlib defaults: left, right, bottom, top (figure fractions)
LINE_WIDTH_PT = 3.0
SUPERSAMPLE = 4

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
FIREBRICK = (178, 34, 34)
ORANGE = (255, 165, 0)

ANGLE_INDICES = range(-40, 44)  # angle = i * 9 / 10 degrees
LIGHT_INDICES = tuple(j for j in range(60, 148) if j != 100)  # 90 degrees (vertical rays) is left out
TEST_COUNTER = 4
VAL_EVERY = 10  # every 10th training image of the walk is held out for validation (548 images)

GRAPH: dict = {
    "variables": [
        {
            "name": "angle",
            "units": "degrees",
            "description": "pendulum angle from the vertical (positive swings the bob to the right)",
            "normalization": {"mean": 1.8, "std": 37.8},
            "range": [-36.0, 38.7],
        },
        {
            "name": "light",
            "units": "degrees",
            "description": "elevation angle of the parallel light rays, measured from the +x axis",
            "normalization": {"mean": 93.6, "std": 39.6},
            "range": [54.0, 132.3],
        },
        {
            "name": "shadow_length",
            "units": "data units",
            "description": "length of the shadow on the ground (at least 3)",
            "normalization": {"mean": 7.5, "std": 4.5},
            "range": [3.0, 12.5774],
        },
        {
            "name": "shadow_position",
            "units": "data units",
            "description": "x coordinate of the shadow centre on the ground",
            "normalization": {"mean": 11.0, "std": 8.0},
            "range": [2.008, 19.606],
        },
    ],
    "edges": [
        ["angle", "shadow_length"],
        ["angle", "shadow_position"],
        ["light", "shadow_length"],
        ["light", "shadow_position"],
    ],
}


def _require_finite(**values: float | None) -> None:
    """Reject NaN/inf early, naming the argument, instead of drawing garbage."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")


def _project(x: float, y: float, height: float, phi: float) -> float:
    """x where the light ray through (x, y) crosses y = height; cos/sin keeps phi = pi/2 valid."""
    return x + (height - y) * math.cos(phi) / math.sin(phi)


def shadow(angle: float, light: float) -> tuple[float, float]:
    """(shadow_length, shadow_position) caused by the pendulum ``angle`` and the ``light`` angle."""
    _require_finite(angle=angle, light=light)
    if not 0.0 < light < 180.0:
        raise ValueError(f"light must lie strictly between 0 and 180 degrees, got {light!r}")
    theta, phi = math.radians(angle), math.radians(light)
    far_x = PIVOT[0] + PENDULUM_REACH * math.sin(theta)
    far_y = PIVOT[1] - PENDULUM_REACH * math.cos(theta)
    p1 = _project(*PIVOT, GROUND, phi)
    p2 = _project(far_x, far_y, GROUND, phi)
    return max(MIN_SHADOW_LENGTH, abs(p1 - p2)), (p1 + p2) / 2


def shadow_in_view(shadow_length: float, shadow_position: float) -> bool:
    """Whether the whole shadow lies inside the axes box: a shadow cut off at the edge shows a shorter length
    (and another centre) than its labels, which no reader of the image can recover."""
    return X_LIM[0] <= shadow_position - shadow_length / 2 and shadow_position + shadow_length / 2 <= X_LIM[1]


class _Canvas:
    """Supersampled drawing surface using matplotlib's data-to-pixel mapping for the scene."""

    def __init__(self, size: int) -> None:
        n = size * SUPERSAMPLE
        left, right, bottom, top = AXES_BOX
        self.size, self.n = size, n
        self.sx = (right - left) * n / (X_LIM[1] - X_LIM[0])
        self.sy = (top - bottom) * n / (Y_LIM[1] - Y_LIM[0])
        self.x0, self.y0 = left * n, (1.0 - bottom) * n  # pixel position of (X_LIM[0], Y_LIM[0])
        self.line_half_width = LINE_WIDTH_PT * size / 72 * SUPERSAMPLE / 2  # 1 inch figure: dpi = size
        self.image = Image.new("RGB", (n, n), WHITE)
        self.draw = ImageDraw.Draw(self.image)

    def point(self, x: float, y: float) -> tuple[float, float]:
        """Pixel coordinates (PIL puts pixel centres on integers, hence -0.5).

        Clamped to a band around the canvas: Pillow's integer rasteriser wraps around for huge
        coordinates (light near 0 or 180 degrees); only horizontal shadows and far-off-canvas
        discs ever get clamped, so the drawing is unchanged.
        """
        px = self.x0 + (x - X_LIM[0]) * self.sx - 0.5
        py = self.y0 - (y - Y_LIM[0]) * self.sy - 0.5
        return min(max(px, -self.n), 2.0 * self.n), min(max(py, -self.n), 2.0 * self.n)

    def disc(self, x: float, y: float, radius: float, colour: tuple[int, int, int]) -> None:
        """A circle in data units, i.e. an ellipse in pixels as the axes scales differ."""
        px, py = self.point(x, y)
        rx, ry = radius * self.sx, radius * self.sy
        self.draw.ellipse([px - rx, py - ry, px + rx, py + ry], fill=colour)

    def segment(self, a: tuple[float, float], b: tuple[float, float], colour: tuple[int, int, int]) -> None:
        """A thick line with square caps projecting half the width, matplotlib's default cap style."""
        (ax, ay), (bx, by) = self.point(*a), self.point(*b)
        norm = math.hypot(bx - ax, by - ay)
        ux, uy = ((bx - ax) / norm, (by - ay) / norm) if norm > 0 else (1.0, 0.0)
        h = self.line_half_width
        dx, dy, nx, ny = ux * h, uy * h, -uy * h, ux * h
        corners = [
            (ax - dx + nx, ay - dy + ny),
            (bx + dx + nx, by + dy + ny),
            (bx + dx - nx, by + dy - ny),
            (ax - dx - nx, ay - dy - ny),
        ]
        self.draw.polygon(corners, fill=colour)

    def finish(self) -> np.ndarray:
        """Clip to the axes box (as matplotlib clips artists) and downsample for anti-aliasing."""
        left, right, bottom, top = AXES_BOX
        box = (
            round(left * self.n),
            round((1.0 - top) * self.n),
            round(right * self.n),
            round((1.0 - bottom) * self.n),
        )
        clipped = Image.new("RGB", (self.n, self.n), WHITE)
        clipped.paste(self.image.crop(box), box[:2])
        small = clipped.resize((self.size, self.size), Image.Resampling.BOX)
        return np.array(small, dtype=np.uint8)


def render(
    angle: float,
    light: float,
    size: int = 96,
    *,
    shadow_length: float | None = None,
    shadow_position: float | None = None,
) -> np.ndarray:
    """Draw the scene as a (size, size, 3) uint8 RGB array.

    The shadow overrides replace the physical shadow, which is how do() on a shadow variable is
    shown. Drawing order is sun, rod, bob, shadow.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    _require_finite(shadow_length=shadow_length, shadow_position=shadow_position)
    length, position = shadow(angle, light)
    length = length if shadow_length is None else shadow_length
    position = position if shadow_position is None else shadow_position
    theta, phi = math.radians(angle), math.radians(light)
    bob = (PIVOT[0] + ROD_LENGTH * math.sin(theta), PIVOT[1] - ROD_LENGTH * math.cos(theta))
    canvas = _Canvas(size)
    canvas.disc(_project(*PIVOT, SUN_HEIGHT, phi), SUN_HEIGHT, SUN_RADIUS, ORANGE)
    canvas.segment(PIVOT, bob, BLACK)
    canvas.disc(*bob, BOB_RADIUS, FIREBRICK)
    canvas.segment((position - length / 2, GROUND), (position + length / 2, GROUND), BLACK)
    return canvas.finish()


def samples() -> list[dict]:
    """All 7,308 rows in generation order: the reference test split, and a validation split carved from train.

    Test rule (the reference's), read literally: one counter over the whole (i outer, j inner) walk, starting
    at 0; an image goes to test when the counter equals 4 (the counter is then reset to 0), otherwise to train,
    and the counter is incremented after every image. The first test image is therefore the 5th and after that
    every 4th: 5,482 reference-train / 1,826 test images. Every ``VAL_EVERY``-th of those reference-train
    images (the 10th, 20th, ...) becomes validation, where knobs are chosen without touching test:
    4,934 train / 548 val / 1,826 test.
    """
    rows, counter, seen = [], 0, 0
    for i in ANGLE_INDICES:
        for j in LIGHT_INDICES:
            angle, light = i * 9 / 10, j * 9 / 10
            length, position = shadow(angle, light)
            split = "test" if counter == TEST_COUNTER else "train"
            counter = (0 if split == "test" else counter) + 1
            if split == "train":
                seen += 1
                split = "val" if seen % VAL_EVERY == 0 else "train"
            rows.append(
                {
                    "file": f"a{i:+03d}_l{j:03d}.png",
                    "split": split,
                    "angle": angle,
                    "light": light,
                    "shadow_length": length,
                    "shadow_position": position,
                }
            )
    return rows


def true_counterfactual(
    labels: Mapping[str, float], do: Mapping[str, float], size: int = 96
) -> tuple[np.ndarray, dict[str, float]]:
    """Ground-truth counterfactual image and labels of the SCM under the intervention ``do``.

    Shadow variables have no noise, so every shadow variable not intervened on is recomputed from the
    (possibly new) angle and light; intervened ones keep their given value. Extra keys in ``labels``
    (e.g. ``file`` of a samples() row) are ignored.
    """
    unknown = sorted(set(do) - set(VARIABLES))
    if unknown:
        raise ValueError(f"unknown variables in do: {unknown}; valid ones are {list(VARIABLES)}")
    missing = [name for name in VARIABLES if name not in labels]
    if missing:
        raise ValueError(f"labels are missing {missing}; all of {list(VARIABLES)} are needed")
    new = {name: float(labels[name]) for name in VARIABLES}
    new.update({name: float(value) for name, value in do.items()})
    physical = dict(zip(_SHADOWS, shadow(new["angle"], new["light"]), strict=True))
    new.update({name: value for name, value in physical.items() if name not in do})
    image = render(new["angle"], new["light"], size, **{name: new[name] for name in _SHADOWS})
    return image, new


def generate(out: str | Path, size: int = 96, progress: bool = True) -> Path:
    """Render all 7,308 images with their exact labels into the dataset layout (atomically; same bytes for
    the same arguments); an existing ``out`` is replaced only if this package wrote it."""
    check_replaceable(out, DATASET_MARKER)  # before any work (and any progress bar)
    rows = samples()
    images = (render(r["angle"], r["light"], size) for r in tqdm(rows, desc="pendulum", unit="img",
                                                                 disable=not progress))
    return write_dataset(out, CausalGraph.from_dict(GRAPH), rows, images)
