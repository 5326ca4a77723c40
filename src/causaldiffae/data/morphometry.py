"""Morpho-MNIST's morphometry and perturbations (Castro et al., "Morpho-MNIST: Quantitative Assessment and
Diagnostics for Representation Learning", JMLR 2019).

:func:`measure` gives a digit's shape attributes (:class:`Morphometrics`: area, skeleton length, stroke
thickness, slant, width, height); :func:`foreground_median` its stroke intensity as DeepSCM measures it.
:func:`set_thickness` thickens or thins a digit by a disc dilation or erosion, :func:`set_intensity` scales its
grey levels, and :func:`render` does both to one source digit.

All lengths are in pixels of the 28x28 digit. Measurements work on an up-sampled copy: bicubic up-sampling by
``scale`` (16 by default), binarised at half the image's intensity range; the image is taken to continue
with background beyond its frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.morphology import skeletonize

NATIVE_SIZE = 28
SCALE = 16
THRESHOLD = 0.5

_MARGIN = 4  # background pixels around the stroke's bounding box before up-sampling (bicubic support is 2)
SPINE = 0.75  # thinning keeps the pixels within SPINE * target / 2 of the skeleton


# -- morphometry ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Morphometrics:
    """Morpho-MNIST's shape attributes of one digit, lengths in pixels of the original image.

    - ``area``: foreground area (pixels of the binarised up-sampled image / scale^2).
    - ``length``: length of the skeleton, each 4-neighbour step counting 1 and each diagonal step sqrt(2)
      (a diagonal is not counted where a 4-neighbour path already joins its ends), divided by scale.
    - ``thickness``: twice the mean Euclidean distance transform of the foreground along its skeleton, divided
      by scale: the mean stroke width.
    - ``slant``: arctan(-mu11 / mu02) of the foreground's second central moments (x to the right, y down), in
      radians; positive when the digit leans right (its top is to the right of its bottom), 0 when upright.
    - ``width``, ``height``: the foreground's axis-aligned bounding box.
    """

    area: float
    length: float
    thickness: float
    slant: float
    width: float
    height: float


class _Shape:
    """The binarised up-sampled foreground, cropped to its bounding box plus a one-pixel background ring.

    ``origin`` is the position of ``binary[0, 0]`` in the up-sampled frame (negative beyond the frame). The
    ring makes the distance transform and the skeleton identical to those of the whole (infinite) frame.
    """

    def __init__(self, binary: np.ndarray, origin: tuple[int, int], scale: int) -> None:
        self.binary, self.origin, self.scale = binary, origin, scale

    @cached_property
    def edt(self) -> np.ndarray:
        return ndimage.distance_transform_edt(self.binary)

    @cached_property
    def skeleton(self) -> np.ndarray:
        return skeletonize(self.binary)

    @property
    def thickness(self) -> float:
        return float(2.0 * self.edt[self.skeleton].mean() / self.scale)

    def morphometrics(self) -> Morphometrics:
        s, b, skel = self.scale, self.binary, self.skeleton
        straight = np.count_nonzero(skel[:, :-1] & skel[:, 1:]) + np.count_nonzero(skel[:-1] & skel[1:])
        down = skel[:-1, :-1] & skel[1:, 1:] & ~(skel[:-1, 1:] | skel[1:, :-1])
        up = skel[:-1, 1:] & skel[1:, :-1] & ~(skel[:-1, :-1] | skel[1:, 1:])
        length = (straight + math.sqrt(2.0) * (np.count_nonzero(down) + np.count_nonzero(up))) / s
        ys, xs = np.nonzero(b)
        dx, dy = xs - xs.mean(), ys - ys.mean()
        mu02 = float(np.mean(dy * dy))
        slant = math.atan(-float(np.mean(dx * dy)) / mu02) if mu02 > 0 else 0.0
        rows, cols = np.flatnonzero(b.any(1)), np.flatnonzero(b.any(0))
        return Morphometrics(
            area=float(ys.size) / s**2,
            length=float(length),
            thickness=self.thickness,
            slant=slant,
            width=float(cols[-1] - cols[0] + 1) / s,
            height=float(rows[-1] - rows[0] + 1) / s,
        )


def _as_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ValueError(f"{name} must be a 2-D grey-level array, got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold grey levels (uint8 or float), got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has NaN or infinite pixels")
    return arr


def _check_settings(scale: int, threshold: float) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")


def _binarise(x: np.ndarray, scale: int, threshold: float) -> _Shape:
    """Up-sample ``x`` (float, 2-D) bicubically by ``scale`` and keep what lies above ``threshold`` of its range."""
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        raise ValueError("the image has no foreground: all its pixels are equal")
    rows, cols = np.flatnonzero((x > lo).any(1)), np.flatnonzero((x > lo).any(0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    m = _MARGIN
    region = np.zeros((r1 - r0 + 2 * m, c1 - c0 + 2 * m), dtype=np.float32)
    region[m:-m, m:-m] = x[r0:r1, c0:c1] - lo
    h, w = region.shape
    up = np.asarray(Image.fromarray(region).resize((w * scale, h * scale), Image.Resampling.BICUBIC))
    binary = up > threshold * (hi - lo)
    if not binary.any():
        raise ValueError("the image has no foreground above the threshold")
    brows, bcols = np.flatnonzero(binary.any(1)), np.flatnonzero(binary.any(0))
    a0, a1, b0, b1 = brows[0] - 1, brows[-1] + 2, bcols[0] - 1, bcols[-1] + 2  # inside: the margin is background
    origin = (int((r0 - m) * scale + a0), int((c0 - m) * scale + b0))
    return _Shape(np.ascontiguousarray(binary[a0:a1, b0:b1]), origin, scale)


def measure(image: np.ndarray, scale: int = SCALE, threshold: float = THRESHOLD) -> Morphometrics:
    """Morpho-MNIST's morphometrics of a grey-level digit (uint8 or float, 28x28 or any 2-D size).

    The image is up-sampled bicubically by ``scale`` (background beyond its frame) and binarised: a pixel is
    foreground when it lies above ``min + threshold * (max - min)`` of the original image (Morpho-MNIST: above
    half the intensity range). The skeleton is skimage's ``skeletonize`` of that binary image and the distance
    transform scipy's Euclidean ``distance_transform_edt``; :class:`Morphometrics` gives each definition.
    Raises ValueError for a constant (blank) image.
    """
    _check_settings(scale, threshold)
    return _binarise(_as_image(image), scale, threshold).morphometrics()


# -- perturbations --------------------------------------------------------------------------------------------
def _downsample(binary: np.ndarray, origin: tuple[int, int], scale: int, shape: tuple[int, int]) -> np.ndarray:
    """Area coverage in [0, 1] of each pixel of a ``shape`` frame by an up-sampled binary image at ``origin``."""
    top, left = origin[0] % scale, origin[1] % scale
    h = -(-(top + binary.shape[0]) // scale) * scale
    w = -(-(left + binary.shape[1]) // scale) * scale
    canvas = np.zeros((h, w), dtype=np.float32)
    canvas[top:top + binary.shape[0], left:left + binary.shape[1]] = binary
    small = canvas.reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))
    r0, c0 = (origin[0] - top) // scale, (origin[1] - left) // scale
    out = np.zeros(shape, dtype=np.float32)
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + small.shape[0], shape[0]), min(c0 + small.shape[1], shape[1])
    if re > rs and ce > cs:
        out[rs:re, cs:ce] = small[rs - r0:re - r0, cs - c0:ce - c0]
    return out


class _Offsets:
    """The foreground dilated (radius > 0) or eroded (radius < 0) by a disc, for any real radius.

    A disc dilation keeps the pixels within ``radius`` of the foreground, an erosion the foreground pixels
    farther than ``radius`` from the background: thresholds of the two Euclidean distance transforms. An
    erosion also keeps the foreground pixels within ``spine`` of the skeleton, so that thinning never breaks a
    stroke: a stroke narrower than the erosion keeps a width of up to ``2 * spine``.
    """

    def __init__(self, shape: _Shape, spine: float) -> None:
        self.shape, self.spine = shape, spine
        self._outer: np.ndarray | None = None
        self._pad = 0

    @cached_property
    def _near_skeleton(self) -> np.ndarray:
        return self.shape.binary & (ndimage.distance_transform_edt(~self.shape.skeleton) <= self.spine)

    def render(self, radius: float, frame: tuple[int, int]) -> np.ndarray:
        s = self.shape
        if radius <= 0:
            binary, origin = (s.edt > -radius) | self._near_skeleton, s.origin
        else:
            if self._outer is None or radius + 1 > self._pad:  # None only before the first dilation (pad 0)
                self._pad = int(math.ceil(radius)) + 1 + s.scale
                outside = np.pad(~s.binary, self._pad, constant_values=True)
                self._outer = ndimage.distance_transform_edt(outside)
            binary = self._outer <= radius
            origin = (s.origin[0] - self._pad, s.origin[1] - self._pad)
        return np.rint(_downsample(binary, origin, s.scale, frame) * 255).astype(np.uint8)


def _thickness_of(image: np.ndarray, scale: int, threshold: float) -> float:
    return _binarise(image.astype(np.float64), scale, threshold).thickness if image.any() else 0.0


def set_thickness(image: np.ndarray, target: float, scale: int = SCALE, threshold: float = THRESHOLD,
                  tol: float = 0.1, max_tries: int = 4) -> np.ndarray:
    """The digit re-drawn with stroke thickness ``target`` (pixels): uint8, same shape, stroke up to 255.

    As in Morpho-MNIST, the binarised up-sampled digit (see :func:`measure`) is dilated (to thicken) or eroded
    (to thin) by a disc of radius ``scale * |target - current| / 2`` up-sampled pixels and down-sampled back
    by area averaging, which anti-aliases the edges. The measured thickness of the result is then checked and
    the radius corrected (secant steps, any real radius: the disc morphology is a threshold of the Euclidean
    distance transforms) until it is within ``tol`` or ``max_tries`` renderings were made; the rendering
    closest to the target is returned. Unlike a plain erosion, thinning keeps the foreground within
    ``SPINE * target / 2`` of the skeleton, so strokes narrower than the erosion thin to about
    ``SPINE * target`` instead of breaking apart. Thickening can close a narrow gap or a small loop, where the
    measured thickness jumps (the skeleton then runs through the filled blob): a target inside such a jump
    is missed, and the closest rendering is returned.
    """
    _check_settings(scale, threshold)
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target thickness must be a positive number of pixels, got {target!r}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be at least 1, got {max_tries!r}")
    x = _as_image(image)
    shape = _binarise(x, scale, threshold)
    offsets = _Offsets(shape, spine=SPINE * target * scale / 2)
    slope = 2.0 / scale  # thickness per unit of radius, ideally
    radius = (target - shape.thickness) / slope
    tries: list[tuple[float, float, float, np.ndarray]] = []  # (error, radius, thickness, image)
    for _ in range(max_tries):
        out = offsets.render(radius, x.shape)
        got = _thickness_of(out, scale, threshold)
        tries.append((abs(got - target), radius, got, out))
        if abs(got - target) <= tol:
            break
        step = slope
        if len(tries) > 1:
            (_, r0, t0, _), (_, r1, t1, _) = tries[-2], tries[-1]
            secant = (t1 - t0) / (r1 - r0) if r1 != r0 else 0.0
            if 0.25 * slope <= secant <= 4.0 * slope:
                step = secant
        radius = radius + (target - got) / step
    return min(tries, key=lambda t: t[0])[3]


def foreground_median(image: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Median grey level of the pixels at or above ``min + threshold * (max - min)``: the stroke intensity
    as DeepSCM measures it."""
    x = _as_image(image)
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        raise ValueError("the image has no foreground: all its pixels are equal")
    return float(np.median(x[x >= lo + threshold * (hi - lo)]))


def set_intensity(image: np.ndarray, target: float, threshold: float = THRESHOLD) -> np.ndarray:
    """The image scaled so that its :func:`foreground_median` is ``target``; rounded, clipped to [0, 255], uint8.

    The whole image is multiplied by one factor (as DeepSCM does), so a zero background stays zero and the
    anti-aliased edges keep their profile. Rounding can move a few pixels across the foreground threshold
    and clipping at 255 can let pixels in, which shifts the median of a thin or unsaturated stroke; the factor
    is then corrected (proportional steps, then bisection once the target is bracketed; at most 30 tries) and
    the first result within half a level, else the closest, is returned.
    """
    if not (math.isfinite(target) and 0 < target <= 255):
        raise ValueError(f"target intensity must lie in (0, 255], got {target!r}")
    x = _as_image(image)
    factor = target / foreground_median(x, threshold)
    below = above = None  # largest factor found too dark, smallest too bright
    best: tuple[float, np.ndarray] | None = None
    for _ in range(30):
        out = np.clip(np.rint(x * factor), 0, 255).astype(np.uint8)
        got = foreground_median(out, threshold) if out.any() else 0.0
        if best is None or abs(got - target) < best[0]:
            best = (abs(got - target), out)
        if abs(got - target) <= 0.5:
            break
        if got < target:
            below = factor if below is None else max(below, factor)
        else:
            above = factor if above is None else min(above, factor)
        if below is not None and above is not None:
            factor = (below + above) / 2
        else:
            factor = factor * target / got if got > 0 else factor * 2
    if best is None:  # the loop above always runs
        raise RuntimeError("set_intensity: no scaling was tried")
    return best[1]


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def render(digit: np.ndarray, thickness: float, intensity: float, size: int = NATIVE_SIZE) -> np.ndarray:
    """The source ``digit`` (28x28) with the given thickness, then intensity: uint8 (size, size).

    Thickness and intensity are set on the 28x28 digit; another ``size`` resizes the result (Lanczos), so the
    thickness label stays in pixels of the 28x28 digit.
    """
    _check_size(size)
    return _resize(set_intensity(set_thickness(digit, thickness), intensity), size)
