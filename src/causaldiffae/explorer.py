"""The counterfactual explorer's engine: everything the web page shows, without the web page.

``causaldiffae explore RUN`` serves it with Gradio (``explore_app.py``); this module holds no UI code, so the
tests drive it directly. Each session (a browser tab) has its own chosen image (from the test split or uploaded):
``Explorer.session`` gives a view that shares the model, the test images and the abduction cache, and ``Sessions``
keeps one view per session key, the least recently used forgotten beyond :data:`MAX_SESSIONS`, so that one user's
upload never shows in another's page and memory stays bounded however many people open it. An image's abduction
(the encoder's latents and the DDIM inversion x_T) is cached per (image, depth, steps), so a slider move only
decodes; the cache holds :data:`CACHE_SIZE` abductions in all, across sessions. A query may ask for ``samples``
K: the counterfactual is then the mean of K draws (``counterfactual(..., samples=K)``), shown beside its spread map;
the K draws' abductions are cached the same way (:data:`SAMPLED_CACHE_SIZE`), seeded, so one image always gets the
same draws.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from PIL import Image

from .counterfactual import Abducted, Spread, abduct_noise, abduct_samples, decode
from .data.base import ImageDataset
from .data.image_folder import read_image
from .graph import CausalGraph
from .images import from_uint8, heat, save_grid, to_uint8
from .metrics.truth import TrueSCM, true_scm
from .model import CausalDiffAE, Latents

#: Abductions kept per explorer, all its sessions together (image x depth x steps); each is one x_T of the model's
#: image size and, from the "exact" abduction, one residual of that size per DDIM step.
CACHE_SIZE = 32
#: Sessions whose chosen image an explorer keeps; beyond this the least recently used is forgotten (its page asks
#: for an image again). A session holds one image and its latents; the abductions are bounded by CACHE_SIZE.
MAX_SESSIONS = 64
#: How many test images the gallery shows.
GALLERY_SIZE = 48
#: Pixels of the longer side at which images are shown (nearest-neighbour upscaling keeps pixels visible).
DISPLAY_SIZE = 192
#: Gain of the difference map: |counterfactual - factual| times this, clipped to 1.
DIFF_GAIN = 4.0
#: Gain of the spread map: the per-pixel std over the K draws times this, clipped to 1 (white: 32 grey levels).
SPREAD_GAIN = 8.0
#: Most draws one query may ask for (each is a counterfactual; the page's latency grows with them).
MAX_SAMPLES = 32
#: Sampled abductions kept (image x depth x steps x K), all sessions together; each is K abductions.
SAMPLED_CACHE_SIZE = 8
#: Seed of the draws: the same image, depth, steps and K always give the same draws, also in another session.
SAMPLES_SEED = 0


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_SERIALS = itertools.count()  # a chosen image's key in the abduction cache: never reused, unlike id()


class Recent(Generic[K, V]):
    """A mapping that keeps its ``size`` most recently used entries, safe to share between the page's threads."""

    def __init__(self, size: int) -> None:
        self.size, self._items, self._lock = size, OrderedDict[K, V](), threading.Lock()

    def get(self, key: K, make: Callable[[], V] | None = None) -> V | None:
        """The entry of ``key``, now the most recent; missing, ``make()`` stored (or None without ``make``)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            if make is None:
                return None
            value = make()  # under the lock: two threads asking for one key get one entry
            self._store(key, value)
            return value

    def put(self, key: K, value: V) -> None:
        """Store ``value`` as the most recent entry, forgetting the least recent beyond ``size``."""
        with self._lock:
            self._store(key, value)

    def _store(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


@dataclass
class Choice:
    """The chosen image: where it came from, its pixels (1, C, H, W), class, latents and known labels; ``key``
    names it in the abduction cache (a new key for a new image or class)."""

    source: str
    x: torch.Tensor
    classes: torch.Tensor | None
    latents: Latents
    estimate: dict[str, float]
    row: int | None = None
    factual: dict[str, float] | None = None
    key: int = field(default_factory=lambda: next(_SERIALS))


@dataclass
class Result:
    """One counterfactual query: the images (H, W, C) uint8 at display size and the numbers beside them."""

    do: dict[str, float]
    factual: np.ndarray
    reconstruction: np.ndarray
    counterfactual: np.ndarray
    difference: np.ndarray
    truth: np.ndarray | None
    estimate: dict[str, float]
    estimate_cf: dict[str, float]
    intervened: list[str]
    affected: list[str]
    seconds: float
    settings: dict[str, float] = field(default_factory=dict)
    source: str = ""
    spread: np.ndarray | None = None
    """With samples: the spread map (std over the draws, times :data:`SPREAD_GAIN`) as a heat image."""
    spread_pixels: float | None = None
    """With samples: the spread map's mean, in grey levels (0-255)."""
    estimate_cf_std: dict[str, float] | None = None
    """With samples: the std over the draws of the model's reading of each variable (label units)."""

    def to_json(self) -> dict[str, Any]:
        """The query and its numbers, as the page offers them for download."""
        spread = {} if self.estimate_cf_std is None else {"spread_pixels_mean": self.spread_pixels,
                                                          "estimate_counterfactual_std": self.estimate_cf_std}
        return {"image": self.source, "do": self.do, **self.settings, "estimate_factual": self.estimate,
                "estimate_counterfactual": self.estimate_cf, **spread, "intervened": self.intervened,
                "affected": self.affected, "seconds": round(self.seconds, 3)}


class Explorer:
    """A model, the test images of its dataset (optional), an abduction cache and one session's chosen image."""

    def __init__(self, model: CausalDiffAE, dataset: ImageDataset | None = None, name: str = "model") -> None:
        self.model, self.name = model.eval(), name
        self.graph: CausalGraph = model.graph
        self.test = None
        if dataset is not None:
            self.test = dataset.split("test") if "test" in dataset.splits else dataset
        self.scm: TrueSCM | None = true_scm(self.test) if self.test is not None else None
        self.choice: Choice | None = None
        self._cache: Recent[tuple[int, float, int], tuple[Abducted, torch.Tensor]] = Recent(CACHE_SIZE)
        self._sampled: Recent[tuple[int, float, int, int], tuple[Latents, Abducted]] = Recent(SAMPLED_CACHE_SIZE)

    def session(self) -> Explorer:
        """Another session's view: the same model, test images and abduction cache; its own chosen image."""
        view = copy.copy(self)
        view.choice = None
        return view

    # -- choosing an image -------------------------------------------------------------------------------
    def gallery(self, count: int = GALLERY_SIZE) -> list[tuple[np.ndarray, str]]:
        """The first ``count`` test images (H, W, C) uint8 with a caption (file name)."""
        if self.test is None:
            return []
        rows = list(range(min(count, len(self.test))))
        images = to_uint8(self.test.batch(rows)["image"])
        return [(_display(im), self.test.files[r]) for im, r in zip(images, rows, strict=True)]

    def choose(self, row: int) -> Choice:
        """Test image ``row`` becomes the chosen image."""
        if self.test is None:
            raise ValueError("this explorer has no dataset: upload an image instead")
        if not 0 <= row < len(self.test):
            raise ValueError(f"there is no test image {row} (the split has {len(self.test)})")
        batch = self.test.batch([row])
        labels = batch["labels"][0].tolist()
        factual = {v: float(x) for v, x in zip(self.graph.variables, labels, strict=True) if not np.isnan(x)}
        return self._set(self.test.files[row], batch["image"], batch.get("class"), row, factual)

    def upload(self, path: str | Path, cls: int | None = None) -> Choice:
        """An image file of the user's, read as the dataset loaders read theirs (16-bit scaled, palettes, CMYK and
        alpha alike; ``read_image``), converted to the model's channels and resized to its size when it is square;
        anything else is refused with a message that says why."""
        try:
            image = read_image(path, "the upload")
        except FileNotFoundError as err:  # the file went away between the upload and its reading
            raise ValueError(str(err)) from None
        image = image.convert("L" if self.model.config.channels == 1 else "RGB")
        if image.width != image.height:
            raise ValueError(f"the upload is {image.width}x{image.height}: the model takes square images "
                             f"({self.model.config.image_size}x{self.model.config.image_size}); crop it first")
        size = self.model.config.image_size
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.LANCZOS)
        x = from_uint8(image)[None]
        return self._set(Path(path).name, x, self._classes(cls), None, None)

    def _classes(self, cls: int | None) -> torch.Tensor | None:
        k = self.model.config.num_classes
        if not k:
            return None
        number = None if cls is None else whole(cls, "class")
        if number is None or not 0 <= number < k:
            raise ValueError(f"this model is also conditioned on a class: pick one of 0..{k - 1}")
        return torch.tensor([number])

    def set_class(self, cls: int) -> Choice:
        """Another class condition for the chosen image (a model trained with one): a new key in the cache."""
        self.choice = replace(self._current(), classes=self._classes(cls), key=next(_SERIALS))
        return self.choice

    def _set(self, source: str, x: torch.Tensor, classes: torch.Tensor | None, row: int | None,
             factual: dict[str, float] | None) -> Choice:
        x = self.model.prepare_images(x)
        with torch.inference_mode():
            latents = self.model.encode(x)
            estimate = self.model.read_labels(latents.z)[0].tolist()
        self.choice = Choice(source, x, classes, latents, dict(zip(self.graph.variables, estimate, strict=True)),
                             row, factual)
        return self.choice

    def _current(self) -> Choice:
        if self.choice is None:
            raise ValueError("choose a test image or upload one first")
        return self.choice

    # -- counterfactuals ---------------------------------------------------------------------------------
    def abduct(self, depth: float, steps: int) -> tuple[Abducted, torch.Tensor]:
        """The noise of the chosen image at (depth, steps) and its reconstruction (do = {}, w = 1): inverted and
        decoded once, then served from the cache."""
        choice = self._current()
        key = (choice.key, float(depth), int(steps))
        cached = self._cache.get(key)
        if cached is None:
            noise = abduct_noise(self.model, choice.x, choice.latents.z, steps=steps, depth=depth,
                                 classes=choice.classes)
            recon = decode(self.model, noise, choice.latents.z, steps=steps, guidance=1.0, depth=depth,
                           classes=choice.classes)
            cached = (noise, recon)
            self._cache.put(key, cached)
        return cached

    def abduct_samples(self, depth: float, steps: int, k: int) -> tuple[Latents, Abducted]:
        """K draws of the chosen image's exogenous state at (depth, steps) (``counterfactual.abduct_samples``,
        seeded with :data:`SAMPLES_SEED`): drawn and abducted once, then served from the cache."""
        choice = self._current()
        key = (choice.key, float(depth), int(steps), k)
        cached = self._sampled.get(key)
        if cached is None:
            cached = abduct_samples(self.model, choice.x, choice.latents, k, steps=steps, depth=depth,
                                    classes=choice.classes, generator=torch.Generator().manual_seed(SAMPLES_SEED))
            self._sampled.put(key, cached)
        return cached

    def check_do(self, do: dict[str, float]) -> dict[str, float]:
        """Values by variable name, each a finite number inside the variable's range (where it has one)."""
        out = {}
        for name, value in do.items():
            if name not in self.graph.variables:
                raise ValueError(f"unknown variable {name!r}; the graph has {', '.join(self.graph.variables)}")
            number = finite(value, name)
            lo_hi = self.graph[name].range
            if lo_hi and not lo_hi[0] <= number <= lo_hi[1]:
                raise ValueError(f"{name} = {number:g} lies outside its range [{lo_hi[0]:g}, {lo_hi[1]:g}]")
            out[name] = number
        return out

    def query(self, do: dict[str, float], guidance: float | None = None, depth: float | None = None,
              steps: float | None = None, samples: float | None = None) -> Result:
        """The chosen image under ``do`` (variable name -> value; empty reconstructs): decoded from the cached
        abduction, with the reconstruction, an amplified difference map and, where the SCM is known and the image
        is a test image, the true counterfactual. A depth, weight or steps of None is the model's own. ``samples``
        K (1 to :data:`MAX_SAMPLES`) shows the mean of K draws instead, with their spread map and the spread of
        the model's reading of each variable."""
        guidance, depth, steps = self._knobs(guidance, depth, steps)
        k = None if samples is None else whole(samples, "samples")
        if k is not None and not 1 <= k <= MAX_SAMPLES:
            raise ValueError(f"samples must lie in 1..{MAX_SAMPLES}, got {k}")
        choice, do = self._current(), self.check_do(do)
        start = time.perf_counter()
        noise, recon = self.abduct(depth, steps)
        spread = None
        if k is None:
            z_cf = self.model.intervene(choice.latents, do) if do else choice.latents.z
            cf = decode(self.model, noise, z_cf, steps=steps, guidance=guidance, depth=depth,
                        classes=choice.classes) if do else recon
        else:
            latents, noises = self.abduct_samples(depth, steps, k)
            z_k = self.model.intervene(latents, do) if do else latents.z
            classes = None if choice.classes is None else choice.classes.repeat(k)
            images = decode(self.model, noises, z_k, steps=steps, guidance=guidance, depth=depth, classes=classes)
            with torch.inference_mode():
                readings = self.model.graph.named(self.model.read_labels(z_k))
            spread = Spread(images[:, None], {name: v[:, None] for name, v in readings.items()})  # K draws of 1 image
            cf, z_cf = images.mean(0, keepdim=True), z_k.mean(0, keepdim=True)  # the reading is linear in z
        seconds = time.perf_counter() - start
        truth = None
        if self.scm is not None and choice.row is not None and do:
            truth = self.scm.counterfactual([choice.row], {k: torch.tensor([v]) for k, v in do.items()})[0]
        with torch.inference_mode():
            estimate_cf = self.model.read_labels(z_cf)[0].tolist()
        difference = ((cf - choice.x).abs().mean(dim=1, keepdim=True) * DIFF_GAIN).clamp(0, 1)
        return Result(
            do=do, factual=_display(to_uint8(choice.x)[0]), reconstruction=_display(to_uint8(recon)[0]),
            counterfactual=_display(to_uint8(cf)[0]), difference=_display(heat(difference[0, 0])),
            truth=None if truth is None else _display(to_uint8(truth)[0]), estimate=dict(choice.estimate),
            estimate_cf=dict(zip(self.graph.variables, estimate_cf, strict=True)), intervened=sorted(do),
            affected=sorted(self.graph.affected(do) - set(do)) if do else [], seconds=seconds,
            settings={"guidance": float(guidance), "depth": float(depth), "steps": int(steps),
                      **({} if k is None else {"samples": k})}, source=choice.source,
            spread=None if spread is None else _display(heat(spread.per_pixel[0] * SPREAD_GAIN)),
            spread_pixels=None if spread is None else float(spread.per_image[0]) * 255,
            estimate_cf_std=None if spread is None else {n: float(v[0]) for n, v in spread.labels_std.items()})

    def _knobs(self, guidance: float | None, depth: float | None, steps: float | None) -> tuple[float, float, int]:
        """The weight, depth and steps of a query, each checked by name (the page's HTTP API takes any JSON
        number, NaN included), or the model's own where one is None."""
        depth, guidance = self.model.knobs.resolve(None if depth is None else finite(depth, "depth"),
                                                   None if guidance is None else finite(guidance, "guidance"))
        return guidance, depth, self.model.knobs.resolve_steps(None if steps is None else whole(steps, "steps"))

    def traversal(self, name: str, k: float = 7, guidance: float | None = None, depth: float | None = None,
                  steps: float | None = None, low: float | None = None,
                  high: float | None = None) -> tuple[np.ndarray, list]:
        """``k`` counterfactuals of the chosen image with ``name`` set to evenly spaced values between ``low``
        and ``high`` (default: the variable's range): one strip image (H, k*W, C) and the values. A depth, weight
        or steps of None is the model's own."""
        guidance, depth, steps = self._knobs(guidance, depth, steps)
        k = whole(k, "values")
        if not 2 <= k <= 16:
            raise ValueError(f"a traversal has 2 to 16 values, got {k}")
        choice = self._current()
        if name not in self.graph.variables:
            raise ValueError(f"unknown variable {name!r}; the graph has {', '.join(self.graph.variables)}")
        declared = self.graph[name].range  # else one normalisation unit around the estimate
        spread = self.graph[name].denormalize(1.0) - self.graph[name].denormalize(0.0)
        lo = float(low if low is not None else (declared[0] if declared else choice.estimate[name] - spread))
        hi = float(high if high is not None else (declared[1] if declared else choice.estimate[name] + spread))
        for end in (lo, hi):
            self.check_do({name: end})
        values = np.linspace(lo, hi, k).tolist()
        noise, _ = self.abduct(depth, steps)
        z = torch.cat([self.model.intervene(choice.latents, {name: v}) for v in values])
        classes = None if choice.classes is None else choice.classes.repeat(len(values))
        images = decode(self.model, noise.repeat(len(values)), z, steps=steps, guidance=guidance, depth=depth,
                        classes=classes)
        strip = np.concatenate([_display(im, DISPLAY_SIZE // 2) for im in to_uint8(images)], axis=1)
        return strip, values

    # -- the graph and the downloads -------------------------------------------------------------------
    def graph_svg(self, result: Result | None = None) -> str:
        """The causal graph as an SVG: nodes by topological layer, left to right; intervened nodes red, their
        descendants orange; after a query each node shows its factual estimate -> counterfactual estimate.
        Every node is a ``<g class="node STATE" data-name="NAME">``, so the page and its tests can find it."""
        order = self.graph.topological_order()
        layer: dict[str, int] = {}
        for name in order:
            layer[name] = 1 + max((layer[p] for p in self.graph.parents(name)), default=-1)
        columns: dict[int, list[str]] = {}
        for name in order:
            columns.setdefault(layer[name], []).append(name)
        width, height = 40 + 200 * len(columns), 30 + 80 * max(map(len, columns.values()))
        pos = {n: (120 + 200 * c, height / 2 + 80 * (i - (len(ns) - 1) / 2))
               for c, ns in columns.items() for i, n in enumerate(ns)}
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="causal-graph" width="{width}" height="{height}" '
                 f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
                 '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
                 'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#666"/></marker></defs>']
        for child in order:
            for parent in self.graph.parents(child):
                (x0, y0), (x1, y1) = pos[parent], pos[child]
                parts.append(f'<line class="edge" x1="{x0 + 80}" y1="{y0}" x2="{x1 - 80}" y2="{y1}" stroke="#666" '
                             f'stroke-width="1.5" marker-end="url(#arrow)"/>')
        fill = {"intervened": "#d62728", "affected": "#ff9f1c", "other": "#e6e6e6"}
        for name, (x, y) in pos.items():
            state = _node_state(name, result)
            value = "" if result is None else f"{result.estimate[name]:.3g} → {result.estimate_cf[name]:.3g}"
            text = "#fff" if state == "intervened" else "#111"
            parts.append(f'<g class="node {state}" data-name="{_escape(name)}"><rect x="{x - 80}" y="{y - 24}" '
                         f'width="160" height="48" rx="10" fill="{fill[state]}" stroke="#333"/>'
                         f'<text x="{x}" y="{y - 4}" text-anchor="middle" fill="{text}" font-weight="bold">'
                         f'{_escape(name)}</text><text class="value" x="{x}" y="{y + 13}" text-anchor="middle" '
                         f'fill="{text}">{value}</text></g>')
        return "".join(parts) + "</svg>"

    def save(self, result: Result, out: str | Path) -> tuple[Path, Path]:
        """The query's grid (factual, reconstruction, counterfactual, difference, truth) as PNG and its JSON."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        shown = [result.factual, result.reconstruction, result.counterfactual, result.difference]
        mean = "counterfactual" if result.spread is None else f"mean of {result.settings['samples']:g}"
        names = ["factual", "reconstruction", mean, f"difference x{DIFF_GAIN:g}"]
        if result.spread is not None:
            shown.append(result.spread)
            names.append(f"spread x{SPREAD_GAIN:g}")
        if result.truth is not None:
            shown.append(result.truth)
            names.append("true counterfactual")
        row = torch.stack([from_uint8(im) for im in shown])
        save_grid(out / "counterfactual.png", [row], [], names)
        from .atomic import write_text

        write_text(out / "query.json", json.dumps(result.to_json(), indent=1) + "\n")
        return out / "counterfactual.png", out / "query.json"


class Sessions:
    """One ``Explorer.session`` view per session key (Gradio's session hash), made on first use; beyond ``size``
    sessions the least recently used is forgotten, so the memory held for sessions stays bounded."""

    def __init__(self, app: Explorer, size: int = MAX_SESSIONS) -> None:
        self.app, self._views = app, Recent[str, Explorer](size)

    def get(self, key: str | None) -> Explorer:
        """The view of session ``key``; a request without a key gets a fresh view that no one else sees."""
        if not key:
            return self.app.session()
        view = self._views.get(key, self.app.session)
        assert view is not None
        return view

    def end(self, key: str | None) -> None:
        """Forget session ``key`` (its tab was closed)."""
        if key:
            self._views.pop(key)

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, key: object) -> bool:
        return key in self._views


def finite(value: Any, name: str) -> float:
    """``value`` as a finite float, else a message naming ``name`` (not Python's "could not convert")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} = {value!r} is not a finite number")
    return number


def whole(value: Any, name: str) -> int:
    """``value`` as an int when it is a whole number (5 or 5.0), else a message naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} = {value!r} is not a whole number")
    number = finite(value, name)
    if number != int(number):
        raise ValueError(f"{name} = {value!r} is not a whole number")
    return int(number)


def _node_state(name: str, result: Result | None) -> str:
    if result is not None and name in result.intervened:
        return "intervened"
    if result is not None and name in result.affected:
        return "affected"
    return "other"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _display(image: np.ndarray, size: int = DISPLAY_SIZE) -> np.ndarray:
    """An image (H, W[, C]) uint8 upscaled by an integer factor with nearest neighbours, as (H', W', 3)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    factor = max(1, size // max(image.shape[:2]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
