"""The ``images/`` folder of a dataset: which files may be read, how they are decoded, and the decoded cache.

- Only files inside ``images/`` are read: a ``file`` cell whose path (symlinks followed) leads outside it is
  refused by name, so a dataset cannot pull other files of the machine into training or its cache.
- An image's header is checked before any pixel is decoded: more than :data:`MAX_PIXELS` pixels (a
  decompression bomb, or a photo far larger than any model here) is refused; so is a wrong size without resize.
- Channels: a dataset is RGB if any of its images is in colour, else grey ("L"); every image is converted to
  that one mode (alpha dropped, palettes expanded, grey copied into three channels), whatever the first row is.
  16-bit grey is scaled by 255/65535 (Pillow's own conversion clips it, which turns most images white).
- The decode is cached in ``cache/images-SIZE-RESIZE-KEY.npy`` (uint8, no pickle), where KEY hashes labels.csv,
  :data:`DECODE_VERSION` and every image's size, modification time and inode: an edited, replaced or deleted
  image is read again. A cache that is not a uint8 (N, C, H, W) array of this dataset is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..atomic import atomic_path

#: The most pixels (width x height) an image may have; larger headers are refused before decoding.
MAX_PIXELS = 4096 * 4096
#: Version of the decoding rules, part of the cache key: pixels decoded under older rules are never served.
DECODE_VERSION = 2
_GREY = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_SIXTEEN_BIT = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
_CACHE_NAME = re.compile(r"images-(\d+|native)-[01]-[0-9a-f]{12,40}\.npy")


def read_images(root: Path, files: Sequence[str], lines: Sequence[int], image_size: int | None,
                resize: bool) -> np.ndarray:
    """uint8 (N, C, H, W) images of ``files`` (names under ``root/images``; ``lines`` their labels.csv lines),
    from the cache when it matches every file, else decoded and cached."""
    stats = _stat_all(root, files, lines)
    key = hashlib.sha1((root / "labels.csv").read_bytes())
    key.update(f"decode v{DECODE_VERSION}\n".encode())
    for st in stats:
        key.update(f"{st.st_size} {st.st_mtime_ns} {st.st_ino}\n".encode())
    prefix = f"images-{image_size or 'native'}-{int(resize)}-"
    cache = root / "cache" / f"{prefix}{key.hexdigest()[:16]}.npy"
    images = _read_cache(cache, len(files), image_size)
    if images is None:
        images = _decode_all(root, files, lines, image_size, resize)
        _write_cache(cache, images, prefix)
    return images


def _stat_all(root: Path, files: Sequence[str], lines: Sequence[int]) -> list[os.stat_result]:
    """The stat of every image file, after checking that it lies inside images/ and is a regular file. Each
    subfolder is resolved once; a file itself only when it is a symlink."""
    folder = root / "images"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: a dataset folder needs graph.yaml, labels.csv and images/")
    inside = os.path.realpath(folder)
    parents = {"": inside}  # subfolder of images/ -> where it resolves to (strings: pathlib costs 10 us a file)

    prefix = os.path.join(inside, "")

    def within(path: str) -> bool:
        return path == inside or path.startswith(prefix)

    stats = []
    for i, name in enumerate(files):
        parent, _, leaf = name.rpartition("/")
        try:
            if parent not in parents:
                parents[parent] = os.path.realpath(folder / parent)
            path = os.path.join(parents[parent], leaf)
            st = os.lstat(path) if within(parents[parent]) else None
            if st is None or stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(path)
                if not within(target):
                    raise ValueError(f"{_where(name, lines[i])} leads outside {folder} (to {target}); a dataset "
                                     "reads only files inside its images/ folder")
                st = os.stat(target)
        except FileNotFoundError:
            raise FileNotFoundError(f"{_where(name, lines[i])} is missing from {folder}") from None
        except (OSError, RuntimeError) as err:  # a symlink loop, permissions
            problem = getattr(err, "strerror", None) or err
            raise ValueError(f"{_where(name, lines[i])} cannot be read: {problem}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{_where(name, lines[i])} is not a file")
        stats.append(st)
    return stats


def _where(name: str, line: int) -> str:
    return f"image {name!r} (labels.csv line {line})"


def _read_cache(path: Path, n: int, image_size: int | None) -> np.ndarray | None:
    """The cached decode, or None when there is none or it is not a uint8 (n, C, H, W) array for this dataset."""
    if not path.is_file():
        return None
    try:
        images = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):  # truncated, an object array, not .npy at all
        return None
    ok = (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
          and images.shape[0] == n and images.shape[1] in (1, 3)
          and (image_size is None or images.shape[2:] == (image_size, image_size)))
    return images if ok else None


def _write_cache(path: Path, images: np.ndarray, prefix: str) -> None:
    """Write the decode and remove the caches of this size that older versions of the images left behind."""
    try:
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            np.save(fh, images, allow_pickle=False)
        for old in path.parent.glob(f"{prefix}*.npy"):
            if old != path and _CACHE_NAME.fullmatch(old.name):
                old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only dataset folder still loads, only slower next time


def _decode_all(root: Path, files: Sequence[str], lines: Sequence[int], image_size: int | None,
                resize: bool) -> np.ndarray:
    arrays: list[np.ndarray] = []
    target = (image_size, image_size) if image_size else None
    for name, line in zip(files, lines, strict=True):
        img = _decode(root / "images" / name, _where(name, line), target, resize)
        target = target or img.size  # without image_size, the first image sets the size
        if img.size != target:
            img = img.resize(target, Image.Resampling.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    channels = max(a.shape[0] for a in arrays)
    return np.ascontiguousarray(np.stack([np.repeat(a, channels // a.shape[0], axis=0) for a in arrays]))


def read_image(path: str | Path, name: str | None = None) -> Image.Image:
    """One image file of any size as 8-bit "L" or "RGB" (see :func:`_eight_bit`), refused in one line naming it
    (as ``name``, e.g. "the upload", else by its path) when it is missing, not an image, truncated, or its header
    claims more than :data:`MAX_PIXELS` pixels."""
    return _decode(Path(path), name or f"image {str(path)!r}", None, resize=True)


def _decode(path: Path, where: str, target: tuple[int, int] | None, resize: bool) -> Image.Image:
    """One image as 8-bit "L" or "RGB", its header checked before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ValueError(f"{where} is {width}x{height} pixels, more than the {MAX_PIXELS:,} "
                                     "decoded here (a decompression bomb?); shrink it first")
                if target and img.size != target and not resize:
                    raise ValueError(f"{where} is {width}x{height} but {target[0]}x{target[1]} is expected; set "
                                     "data.resize: true to resize all images")
                img.load()
                return _eight_bit(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{where} is refused before decoding: {err}") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{where} not found") from None
    except UnidentifiedImageError:
        raise ValueError(f"{where} is not an image (Pillow cannot identify its format)") from None
    except OSError as err:  # truncated or corrupt data
        raise ValueError(f"{where} is unreadable: {str(err).splitlines()[0] if str(err) else type(err).__name__}") \
            from None


def _eight_bit(img: Image.Image) -> Image.Image:
    """"L" for grey images (and palettes of greys), else "RGB"; 16-bit grey scaled to 0-255, not clipped."""
    if img.mode in _SIXTEEN_BIT:
        arr = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8))
    grey = img.mode in _GREY
    if img.mode in ("P", "PA"):
        palette = np.asarray(img.getpalette() or [0, 0, 0]).reshape(-1, 3)
        grey = bool((palette == palette[:, :1]).all())
    return img.convert("L" if grey else "RGB")
