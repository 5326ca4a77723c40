"""Counterfactual generation: abduction -> action -> prediction (docs/method-notes.md, "Counterfactuals").

1. Abduction: ``u = mu(x0)``, ``z = causal_layer(u)``; ``x_T`` by deterministic DDIM inversion of x0
   conditioned on the factual z, with the residual of each factual decoding step (``abduction="exact"``, the
   default: do={} then reconstructs at any number of steps; ``"ddim"`` is the plain inversion; the reference
   draws fresh noise instead, and ``abduction="noise"`` keeps that choice for comparison).
2. Action: ``do`` sets the intervened blocks (label units -> normalised value broadcast over the block) and
   recomputes their descendants through the learned mechanisms with the same u.
3. Prediction: DDIM decoding of x_T (adding the residuals back) with the counterfactual z and guidance weight w:
   ``eps = eps_null + w * (eps_cf - eps_null)``, both evaluations in one UNet call.

``samples=K`` answers one query K times from K draws of the exogenous state: u from the encoder's posterior
q(u|x) instead of its mean (``posterior``), x_T abducted given each draw's z, and with ``eta`` > 0 fresh noise in
every decoding step (stochastic DDIM). The result is their mean image, with the per-pixel spread over the draws and
the spread of the model's reading of every variable (``Spread``): how much the answer depends on what the image
does not pin down (docs/method-notes.md, "Counterfactual uncertainty").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Integral, Real

import numpy as np
import torch

from . import memory
from .diffusion import ddim, dpm_solver
from .images import to_signed, to_unit
from .knobs import DEFAULT_ABDUCTION, Abduction, Solver, check_decoding
from .model import CausalDiffAE, Latents, Value

SOLVERS: dict[str, ddim.Sampler] = {"ddim": ddim.sample, "dpm++2m": dpm_solver.sample}
Images = torch.Tensor | np.ndarray
#: Pixels (images x channels x height x width) that one encoder or UNet call sees at most: larger queries run as
#: several calls, so that the working memory stays bounded however many images and columns are asked for (606
#: RGB images of 96 px per call, 21,845 of 16 px). The results themselves are checked against the memory up front.
MAX_PIXELS_PER_CALL = 1 << 24


@dataclass(frozen=True)
class Abducted:
    """What abduction recovers of a batch of B images besides their latents: the noise x_T (B, C, H, W) at the top
    of the trajectory and, from the "exact" abduction, the residual of each of the K factual DDIM decoding steps
    (K, B, C, H, W), which decoding adds back (``ddim.invert_exact``)."""

    x_T: torch.Tensor
    residuals: torch.Tensor | None = None
    fresh: torch.Tensor | None = None
    """The standard normal noise (K, B, C, H, W) that stochastic DDIM (``eta`` > 0) adds in each of its K decoding
    steps: drawn from its prior, since no image tells it, and held here so that every column of a sweep (and the
    reconstruction) decodes with the same draw."""

    def repeat(self, k: int) -> Abducted:
        """The batch k times over, as ``torch.cat([x] * k)``: to decode k latents of each image in one batch."""
        ones = [1] * (self.x_T.dim() - 1)
        per_step = [None if t is None else t.repeat(1, k, *ones) for t in (self.residuals, self.fresh)]
        return Abducted(self.x_T.repeat(k, *ones), *per_step)

    def with_fresh(self, steps: int, generator: torch.Generator | None = None) -> Abducted:
        """The same noise with ``fresh`` drawn for ``steps`` stochastic DDIM steps (on the CPU, as ``generator``)."""
        fresh = torch.randn((steps, *self.x_T.shape), generator=generator, device="cpu").to(self.x_T)
        return replace(self, fresh=fresh)


@dataclass(frozen=True)
class Spread:
    """The K counterfactuals behind a query answered ``samples=K`` times (``counterfactual``), whose mean is the
    image shown: how much they disagree, per pixel and in the model's reading of each variable. Standard deviations
    are over the K draws, without Bessel's correction (0 for K = 1)."""

    samples: torch.Tensor
    """The K images of each query (K, B, C, H, W) in [0, 1]; a sweep's have its column axis first (k, K, B, C, H, W)."""
    labels_cf: dict[str, torch.Tensor]
    """The model's reading of each draw's counterfactual latents, label units (K, B); a sweep's (k, K, B)."""

    @property
    def std(self) -> torch.Tensor:
        """Per-pixel and channel std over the draws (B, C, H, W)."""
        return self.samples.float().std(dim=-5, correction=0)

    @property
    def per_pixel(self) -> torch.Tensor:
        """The spread map (B, H, W): the std over the draws, averaged over the channels, on the [0, 1] scale."""
        return self.std.mean(dim=-3)

    @property
    def per_image(self) -> torch.Tensor:
        """One number per image (B,): the spread map's mean over the pixels."""
        return self.per_pixel.mean(dim=(-2, -1))

    @property
    def labels_std(self) -> dict[str, torch.Tensor]:
        """Std of the model's reading of each variable over the draws (B,), label units: 0 for an intervened one."""
        return {name: v.float().std(dim=-2, correction=0) for name, v in self.labels_cf.items()}

    def column(self, i: int) -> Spread:
        """Column i of a sweep's spread."""
        return Spread(self.samples[i], {k: v[i] for k, v in self.labels_cf.items()})


@dataclass(frozen=True)
class Counterfactual:
    """One counterfactual query's result: images in [0, 1], latents (B, n, d), labels by variable name (B,)."""

    images: torch.Tensor
    """The counterfactual images (B, C, H, W)."""
    noise: Abducted
    """The abducted noise (x_T and any residuals) both the counterfactual and the reconstruction decode from."""
    z: torch.Tensor
    z_cf: torch.Tensor
    labels: dict[str, torch.Tensor]
    """The model's reading of the factual latents, in label units: what it thinks each variable is."""
    labels_cf: dict[str, torch.Tensor]
    """The model's reading of the counterfactual latents: what it thinks each variable becomes."""
    reconstruction: torch.Tensor | None = None
    """The same noise decoded with the factual z (the null intervention), when asked for."""
    spread: Spread | None = None
    """With ``samples=K``: the K draws behind ``images``, which is then their mean (as are ``z``, ``z_cf``, the
    labels and the reconstruction; ``noise`` holds every draw's, K*B, sample-major)."""

    @property
    def x_T(self) -> torch.Tensor:
        """The abducted x_T (B, C, H, W)."""
        return self.noise.x_T


@dataclass(frozen=True)
class Sweep:
    """Several (do, guidance) columns of the same images from one abduction: a traversal or a guidance sweep.
    Like ``Counterfactual`` with a leading column axis k on ``images`` (k, B, C, H, W), ``z_cf`` (k, B, n, d) and
    every ``labels_cf`` entry (k, B), however many columns there are."""

    images: torch.Tensor
    noise: Abducted
    z: torch.Tensor
    z_cf: torch.Tensor
    labels: dict[str, torch.Tensor]
    labels_cf: dict[str, torch.Tensor]
    reconstruction: torch.Tensor | None = None
    spread: Spread | None = None

    @property
    def x_T(self) -> torch.Tensor:
        """The abducted x_T (B, C, H, W)."""
        return self.noise.x_T

    def __len__(self) -> int:
        return self.images.shape[0]

    def reconstructed(self) -> torch.Tensor:
        """The reconstruction of a sweep asked for one (``reconstruct=True``); an error otherwise."""
        if self.reconstruction is None:
            raise ValueError("this sweep decoded no reconstruction: pass reconstruct=True")
        return self.reconstruction

    def column(self, i: int) -> Counterfactual:
        """Column i as one ``Counterfactual``."""
        return Counterfactual(self.images[i], self.noise, self.z, self.z_cf[i], self.labels,
                              {k: v[i] for k, v in self.labels_cf.items()}, self.reconstruction,
                              None if self.spread is None else self.spread.column(i))


def guided_denoiser(model: CausalDiffAE, cond: torch.Tensor, guidance: float) -> ddim.Denoiser:
    """eps(x_t, t) for condition vectors ``cond`` (B, n*d) and weight w; w = 1 skips the null branch, w = 0 the
    conditional one."""
    if guidance == 1.0:
        return lambda x_t, t: model.eps(x_t, t, cond)
    null = model.condition(None, cond.shape[0])
    if guidance == 0.0:  # the unconditional model: the conditional branch would get weight 0
        return lambda x_t, t: model.eps(x_t, t, null)

    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = model.eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([null, cond]))
        eps_null, eps_cond = eps.chunk(2)
        return eps_null + guidance * (eps_cond - eps_null)

    return denoiser


@torch.inference_mode()
def abduct_noise(model: CausalDiffAE, x: Images, z: torch.Tensor, *, steps: int | None = None,
                 depth: float | None = None, abduction: Abduction = DEFAULT_ABDUCTION,
                 classes: torch.Tensor | None = None, generator: torch.Generator | None = None) -> Abducted:
    """The noise of images x in [0, 1] given their factual latents z, for ``decode``: x_T by DDIM inversion with
    the factual decoding's residuals ("exact"), by plain DDIM inversion ("ddim"), or fresh noise at the top
    ("noise"); ``steps`` and ``depth`` None = the model's own (``model.knobs``)."""
    depth, _ = model.knobs.resolve(depth, None)
    steps = model.knobs.resolve_steps(steps)
    x = model.prepare_images(x)
    z = _latents(model, z, len(x))
    _check_knobs(steps, depth)
    x0 = to_signed(x)
    residuals = None
    if abduction in ("exact", "ddim"):
        cond = model.condition(z, x.shape[0], classes)
        if abduction == "ddim":
            x_T = _in_calls(model, len(x0), 1.0, lambda s: ddim.invert(guided_denoiser(model, cond[s], 1.0), x0[s],
                                                                        model.schedule, steps, depth))
        else:
            parts = [ddim.invert_exact(guided_denoiser(model, cond[s], 1.0), x0[s], model.schedule, steps, depth)
                     for s in _slices(len(x0), _per_call(model, 1.0))]
            x_T, residuals = (torch.cat(p, dim=i) for i, p in enumerate(zip(*parts, strict=True)))
            _check_finite(residuals, "abduction residuals", 1.0)
    elif abduction == "noise":
        top = ddim.timesteps(model.schedule.num_timesteps, steps, depth)[-1]
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
        x_T = model.schedule.add_noise(x0, noise, torch.full((x0.shape[0],), top, device=x0.device))
    else:
        raise ValueError(f"abduction must be 'exact', 'ddim' or 'noise', got {abduction!r}")
    _check_finite(x_T, "abducted noise x_T", 1.0)
    return Abducted(x_T, residuals)


@torch.inference_mode()
def decode(model: CausalDiffAE, noise: Abducted | torch.Tensor, z: torch.Tensor, *, steps: int | None = None,
           guidance: float | None = None, depth: float | None = None, solver: Solver = "ddim",
           classes: torch.Tensor | None = None, clip: bool = False, spacing: ddim.Spacing = "leading",
           eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Decoding of ``noise`` (``abduct_noise``'s, or an x_T tensor) with latents z (B, n, d) and guidance weight w
    -> images in [0, 1]; ``steps``, ``guidance`` and ``depth`` None = the model's own and, after an abduction,
    the same as its; ``solver`` "dpm++2m" decodes with the second-order multistep solver over the same timesteps
    (not after the "exact" abduction, whose residuals belong to DDIM's steps); ``clip`` the predicted x0 only when
    x_T is fresh noise, not an inversion; ``spacing="trailing"`` when x_T is pure noise (the trajectory then
    starts at t = T - 1; see ``ddim.timesteps``). ``eta`` in (0, 1] decodes with stochastic DDIM, whose step noise is
    the noise's ``fresh`` or, without it, drawn from ``generator``."""
    depth, guidance = model.knobs.resolve(depth, guidance)
    steps = model.knobs.resolve_steps(steps)
    noise = noise if isinstance(noise, Abducted) else Abducted(noise)
    x_T = _tensor(model, noise.x_T, "x_T")
    z = _latents(model, z, len(x_T))
    _check_knobs(steps, depth)
    _check_guidance(guidance)
    residuals = noise.residuals
    check_decoding("ddim" if residuals is None else "exact", solver)
    _check_eta(eta, solver)
    if residuals is not None and len(residuals) != steps:
        raise ValueError(f"the noise was abducted with {len(residuals)} steps and cannot be decoded with {steps}: "
                         "abduct and decode with the same steps")
    fresh = None
    if eta:
        fresh = (noise if noise.fresh is not None else noise.with_fresh(steps, generator)).fresh
    cond = model.condition(z, x_T.shape[0], classes)

    def run(s: slice) -> torch.Tensor:
        denoiser = guided_denoiser(model, cond[s], guidance)
        if solver != "ddim":
            return SOLVERS[solver](denoiser, x_T[s], model.schedule, steps, depth, clip=clip, spacing=spacing)
        return ddim.sample(denoiser, x_T[s], model.schedule, steps, depth, clip=clip, spacing=spacing,
                           residuals=None if residuals is None else residuals[:, s], eta=eta,
                           fresh=None if fresh is None else fresh[:, s])

    x0 = _in_calls(model, len(x_T), guidance, run)
    _check_finite(x0, "decoded images", guidance)
    return to_unit(x0)


@torch.inference_mode()
def counterfactual(model: CausalDiffAE, x: Images, do: Mapping[str, Value], *, steps: int | None = None,
                   guidance: float | None = None, depth: float | None = None,
                   abduction: Abduction = DEFAULT_ABDUCTION, solver: Solver = "ddim",
                   classes: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   latents: Latents | None = None, labels: torch.Tensor | None = None,
                   reconstruct: bool = False, samples: int | None = None, eta: float = 0.0,
                   posterior: bool = True) -> Counterfactual:
    """The counterfactual of images ``x`` (B, C, H, W) in [0, 1] under ``do`` = {name: value in label units}:
    ``counterfactual(model, x, {"angle": 30}).images``.

    ``x`` is a tensor or numpy array of any float type (converted to the model's); an empty batch, NaN or inf
    pixels, a non-integer ``steps`` or a non-finite ``guidance`` are refused by name, and so are outputs that come
    out NaN or inf (a model whose weights hold NaN) instead of black images.

    A value is a scalar or one value per image; several variables at once are one joint intervention;
    ``do={}`` reconstructs. ``depth`` in (0, 1] inverts only part of the way (1.0 = all the way to x_T);
    ``steps`` (DDIM steps of the inversion and of the decoding), ``guidance`` and ``depth`` None take the model's
    own knobs (``model.knobs``: its ``knobs.json``, else the global defaults 50, 1 and 0.5). ``solver`` is the
    decoder ("dpm++2m": second order at the same calls, after a plain "ddim" abduction). ``abduction`` "exact"
    (the default) is DDIM inversion that also keeps each factual decoding step's residual, so that ``do={}``
    reconstructs at any ``steps`` and few steps lose little (one more network call); "ddim" is the plain
    inversion and "noise" the reference code's fresh noise. ``classes`` (B,) is the extra
    class condition of a model trained with one (``num_classes > 0``). ``latents`` are the factual latents when
    they are already known (``model.encode(x)``; the label-conditional baseline's come from the factual labels:
    ``model.encode(x, labels=...)``), else ``x`` is encoded. ``labels`` (B, n) are the factual labels where
    known (NaN elsewhere): the mechanisms then abduct each child's noise from them instead of from the model's
    reading of the image (``model.intervene``). ``reconstruct`` also decodes the factual latents in the same batch.

    ``samples=K`` answers the query K times, each from its own draw of the exogenous state (``generator`` seeds every
    draw): u from the encoder's posterior q(u|x) (``posterior``; its mean otherwise) with x_T abducted given that
    draw, and with ``eta`` in (0, 1] stochastic DDIM decoding (fresh noise in every step; ``eta`` applies without
    ``samples`` too). ``images`` is then the mean of the K images and ``spread`` holds them, their per-pixel spread
    and the spread of the model's reading of every variable (``Spread``). It costs K counterfactuals.
    """
    return sweep(model, x, [(do, guidance)], steps=steps, depth=depth, abduction=abduction, solver=solver,
                 classes=classes, generator=generator, latents=latents, labels=labels,
                 reconstruct=reconstruct, samples=samples, eta=eta, posterior=posterior).column(0)


@torch.inference_mode()
def abduct_samples(model: CausalDiffAE, x: Images, latents: Latents, samples: int, *, posterior: bool = True,
                   steps: int | None = None, depth: float | None = None, abduction: Abduction = DEFAULT_ABDUCTION,
                   classes: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Latents, Abducted]:
    """``samples`` draws of the exogenous state of each image x with its factual ``latents``, sample-major (K*B:
    draw s of image b at s*B + b): u from the encoder's posterior (``posterior``; its mean otherwise), then x_T and
    the residuals abducted given each draw's z (``abduct_noise``). Decoding each with its own latents' do() gives
    the K counterfactuals of ``counterfactual(..., samples=K)``."""
    k = _check_samples(samples)
    lat = model.sample_latents(latents, k, generator) if posterior else Latents(*(t.repeat(k, 1, 1) for t in latents))
    x = model.prepare_images(x).repeat(k, 1, 1, 1)
    repeated = None if classes is None else torch.as_tensor(classes).repeat(k)
    return lat, abduct_noise(model, x, lat.z, steps=steps, depth=depth, abduction=abduction, classes=repeated,
                             generator=generator)


@torch.inference_mode()
def sweep(model: CausalDiffAE, x: Images, columns: Sequence[tuple[Mapping[str, Value], float | None]], *,
          steps: int | None = None, depth: float | None = None, abduction: Abduction = DEFAULT_ABDUCTION,
          solver: Solver = "ddim",
          classes: torch.Tensor | None = None, generator: torch.Generator | None = None,
          latents: Latents | None = None, labels: torch.Tensor | None = None, reconstruct: bool = False,
          samples: int | None = None, eta: float = 0.0, posterior: bool = True) -> Sweep:
    """Several (do, guidance) columns of the same images with one abduction: a traversal or guidance sweep.

    The decodes of all columns (and the reconstruction) run as one batch per weight, in calls of at most
    ``MAX_PIXELS_PER_CALL`` pixels. A weight, ``steps`` or ``depth`` of None is the model's own (``model.knobs``);
    the other arguments are ``counterfactual``'s. With ``samples``, every column is the mean over the same K draws
    (one abduction per draw) and ``spread`` has the column axis first.
    """
    depth, _ = model.knobs.resolve(depth, None)
    steps = model.knobs.resolve_steps(steps)
    x = model.prepare_images(x)
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"images must lie in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]")
    _check_knobs(steps, depth)
    check_decoding(abduction, solver)
    _check_eta(eta, solver)
    k = 1 if samples is None else _check_samples(samples)
    columns = _columns(columns, model.knobs.guidance)
    # a decoded image, x_T, its residuals and the stochastic steps' noise per query and draw
    copies = 2 + (steps if abduction == "exact" else 0) + (steps if eta else 0)
    outputs_per_image = copies * (len(columns) + reconstruct) * k
    memory.check(outputs_per_image * x[0].numel() * x.element_size() * len(x),
                 f"a sweep of {len(columns):,} columns over {len(x):,} images" + (f" x {k} samples" if samples else ""),
                 "ask for fewer columns, images or samples", x.device)
    lat = _encoded(model, x) if latents is None else _given(model, latents, len(x))
    if samples is None:
        noise = abduct_noise(model, x, lat.z, steps=steps, depth=depth, abduction=abduction, classes=classes,
                             generator=generator)
    else:
        if k > 1 and posterior and not model.has_posterior and not eta and abduction != "noise":
            warnings.warn(f"the {k} samples are identical (no posterior to sample u from, eta = 0): their spread is 0; "
                          "give eta > 0 for the decoder's own uncertainty", UserWarning, stacklevel=3)
        lat, noise = abduct_samples(model, x, lat, k, posterior=posterior, steps=steps, depth=depth,
                                    abduction=abduction, classes=classes, generator=generator)
        labels = None if labels is None else torch.as_tensor(labels).repeat(k, 1)
        classes = None if classes is None else torch.as_tensor(classes).repeat(k)
        columns = [(_for_draws(do, k, len(x)), w) for do, w in columns]
    if eta:  # drawn once: every column and the reconstruction decode with the same step noise
        noise = noise.with_fresh(steps, generator)
    z_cfs = torch.stack([model.intervene(lat, do, labels) if do else lat.z for do, _ in columns])  # (k, B, n, d)
    queries = [(z_cfs[i], w) for i, (_, w) in enumerate(columns)]
    if reconstruct:
        queries.append((lat.z, columns[0][1]))
    outputs: list[torch.Tensor] = [noise.x_T] * len(queries)  # each slot replaced by its decode below
    for w in dict.fromkeys(w for _, w in queries):  # one batched decode per distinct weight
        picked = [i for i, (_, wi) in enumerate(queries) if wi == w]
        repeated = None if classes is None else torch.as_tensor(classes).repeat(len(picked))
        images = decode(model, noise.repeat(len(picked)), torch.cat([queries[i][0] for i in picked]),
                        steps=steps, guidance=w, depth=depth, solver=solver, classes=repeated,
                        clip=abduction == "noise", eta=eta)  # fresh noise: clip as the reference
        for i, chunk in zip(picked, images.chunk(len(picked)), strict=True):
            outputs[i] = chunk
    labels_cf = model.read_labels(z_cfs.flatten(0, 1)).unflatten(0, z_cfs.shape[:2])  # (k, B, n)
    result = Sweep(torch.stack(outputs[: len(columns)]), noise, lat.z, z_cfs,
                   model.graph.named(model.read_labels(lat.z)), model.graph.named(labels_cf),
                   outputs[-1] if reconstruct else None)
    return result if samples is None else _folded(result, k)


def _for_draws(do: Mapping[str, Value], k: int, batch: int) -> dict[str, Value]:
    """A do() on a batch of B images as one on its K draws (K*B, sample-major): a value per image is repeated for
    every draw; a single value stays one."""
    out = {}
    for name, value in do.items():
        count = value.numel() if isinstance(value, torch.Tensor) else np.size(value)
        if isinstance(value, (torch.Tensor, np.ndarray, list, tuple)) and count != 1:
            if count != batch:
                raise ValueError(f"do({name}=...) has {count} values for {batch} images")
            try:
                value = torch.as_tensor(value).flatten().repeat(k)
            except (TypeError, ValueError, RuntimeError):
                pass  # not numbers: model.intervene names the problem
        out[name] = value
    return out


def _folded(result: Sweep, k: int) -> Sweep:
    """A sweep over K*B images, K draws of each of B (sample-major) -> their means, with the draws as its spread."""
    def mean(t: torch.Tensor, dim: int) -> torch.Tensor:
        return t.unflatten(dim, (k, -1)).mean(dim)

    images = result.images.unflatten(1, (k, -1))  # (columns, K, B, C, H, W)
    labels_cf = {name: v.unflatten(1, (k, -1)) for name, v in result.labels_cf.items()}
    recon = None if result.reconstruction is None else mean(result.reconstruction, 0)
    return Sweep(images.mean(1), result.noise, mean(result.z, 0), mean(result.z_cf, 1),
                 {name: mean(v, 0) for name, v in result.labels.items()},
                 {name: v.mean(1) for name, v in labels_cf.items()}, recon, Spread(images, labels_cf))


@torch.inference_mode()
def sample(model: CausalDiffAE, do: Mapping[str, Value], n: int, *, steps: int = 50, guidance: float = 1.0,
           classes: torch.Tensor | None = None, generator: torch.Generator | None = None,
           spacing: ddim.Spacing = "trailing") -> torch.Tensor:
    """New images (n, C, H, W) in [0, 1] with the given variables set: no factual image needed.

    Roots not in ``do`` take a value drawn uniformly from their range (or the normalised N(0, 1) when the
    graph gives none); other variables follow their mechanisms with zero exogenous noise; x_T ~ N(0, I) is the
    state at t = T - 1 (the full trajectory in "trailing" spacing), not at the inversion depth of counterfactuals;
    ``spacing="leading"`` starts at T - T/steps instead (compared in ``benchmarks/samples_from_noise.py``).
    ``guidance`` is 1 (the plain conditional model) unless given: a model's own weight is chosen for
    counterfactuals.
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive integer (the number of images), got {n!r}")
    _check_knobs(steps, 1.0)
    _check_guidance(guidance)
    device = next(model.parameters()).device
    pixels = model.config.channels * model.config.image_size**2
    memory.check(2 * n * pixels * 4, f"sampling {n:,} images", "ask for fewer images (n)", device)
    graph = model.graph
    values: dict[str, Value] = dict(do)
    for var in graph.nodes:
        if var.name in values or graph.parents(var.name):
            continue
        r = torch.rand(n, generator=generator)
        values[var.name] = (var.range[0] + r * (var.range[1] - var.range[0])) if var.range \
            else var.denormalize(torch.randn(n, generator=generator))
    z = model.generate_latents(values, n)  # every block is a root or a descendant
    x_T = torch.randn((n, model.config.channels, model.config.image_size, model.config.image_size),
                      generator=generator).to(device)
    return decode(model, x_T, z, steps=steps, guidance=guidance, depth=1.0, classes=classes, clip=True,
                  spacing=spacing)


def _check_knobs(steps: int, depth: float) -> None:
    """DDIM steps a positive integer, depth a number in (0, 1]: refused by name before any work."""
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ValueError(f"steps must be a positive integer (DDIM steps), got {steps!r}")
    if isinstance(depth, bool) or not isinstance(depth, Real) or not 0 < depth <= 1:
        raise ValueError(f"depth must be a number in (0, 1] (1.0 inverts all the way to x_T), got {depth!r}")


def _check_samples(samples: int) -> int:
    """The number of counterfactual samples: a positive integer, refused by name otherwise."""
    if isinstance(samples, bool) or not isinstance(samples, Integral) or samples < 1:
        raise ValueError(f"samples must be a positive integer (counterfactuals drawn per query), got {samples!r}")
    return int(samples)


def _check_eta(eta: float, solver: str) -> None:
    """eta in [0, 1] (0: deterministic DDIM), and a stochastic decoding only with the DDIM solver."""
    if isinstance(eta, bool) or not isinstance(eta, Real) or not 0 <= eta <= 1:
        raise ValueError(f"eta must be a number in [0, 1] (0 = deterministic DDIM, 1 = DDPM's noise), got {eta!r}")
    if eta and solver != "ddim":
        raise ValueError(f"eta > 0 (stochastic DDIM) decodes with solver 'ddim' only, got {solver!r}")


def _check_guidance(guidance: float) -> None:
    if isinstance(guidance, bool) or not isinstance(guidance, Real) or not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number (1 = plain conditional), got {guidance!r}")


def _columns(columns: Sequence[tuple[Mapping[str, Value], float | None]],
             default: float) -> list[tuple[Mapping[str, Value], float]]:
    """Sweep columns as (do mapping, finite guidance weight) pairs, a weight of None = ``default``; anything else
    is refused by name."""
    out = []
    for i, column in enumerate(columns):
        if not isinstance(column, (tuple, list)) or len(column) != 2 or not isinstance(column[0], Mapping):
            raise ValueError(f"sweep column {i} must be a pair (do mapping, guidance weight), got {column!r}")
        weight = default if column[1] is None else column[1]
        _check_guidance(weight)
        out.append((column[0], weight))
    if not out:
        raise ValueError("sweep needs at least one (do, guidance) column")
    return out


def _tensor(model: CausalDiffAE, value: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """A tensor or numpy array of floats -> the model's dtype and device; empty or non-finite is refused by name."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value) if value.dtype.kind == "f" else value
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ValueError(f"{name} must be a float tensor or numpy array, got "
                         f"{getattr(value, 'dtype', type(value).__name__)}")
    param = next(model.parameters())
    value = value.to(device=param.device, dtype=param.dtype)
    if value.dim() == 0 or value.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: shape {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} holds NaN or inf in {int((~torch.isfinite(value)).sum())} of {value.numel()} values")
    return value


def _latents(model: CausalDiffAE, z: torch.Tensor, batch: int) -> torch.Tensor:
    """Latents z (B, n, d) of a batch of ``batch`` images, checked like any other input."""
    z = _tensor(model, z, "z")
    expected = (batch, len(model.graph), model.config.latent_dim)
    if tuple(z.shape) != expected:
        raise ValueError(f"z must have shape {expected} (images, variables, latent_dim), got {tuple(z.shape)}")
    return z


def _check_finite(x: torch.Tensor, what: str, guidance: float) -> None:
    """Non-finite outputs (a model whose weights hold NaN, or an overflow) are an error, never black images."""
    bad = ~torch.isfinite(x)
    if bad.any():
        hint = "" if abs(guidance) <= 10 else f", or guidance {guidance:g} is too large"
        raise ValueError(f"the model's {what} hold NaN or inf ({int(bad.sum()):,} of {x.numel():,} values): its "
                         f"weights may hold NaN or inf{hint}")


def _per_call(model: CausalDiffAE, guidance: float) -> int:
    """Images per UNet call: ``MAX_PIXELS_PER_CALL`` pixels, halved where guidance evaluates two branches."""
    pixels = model.config.channels * model.config.image_size**2 * (1 if guidance in (0.0, 1.0) else 2)
    return max(1, MAX_PIXELS_PER_CALL // pixels)


def _encoded(model: CausalDiffAE, x: torch.Tensor) -> Latents:
    """``model.encode`` in calls of at most ``MAX_PIXELS_PER_CALL`` pixels."""
    parts = [model.encode(x[s]) for s in _slices(len(x), _per_call(model, 1.0))]
    return Latents(*(torch.cat(p) for p in zip(*parts, strict=True)))


def _given(model: CausalDiffAE, latents: Latents, batch: int) -> Latents:
    """Factual latents handed in by the caller, checked like any other input."""
    if not isinstance(latents, Latents):
        raise ValueError(f"latents must be the Latents of model.encode, got {type(latents).__name__}")
    return Latents(*(_latents(model, t, batch) for t in latents))


def _slices(n: int, per: int) -> list[slice]:
    return [slice(i, i + per) for i in range(0, n, per)]


def _in_calls(model: CausalDiffAE, n: int, guidance: float, fn: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """``fn`` over consecutive slices of a batch of n images, each within the per-call budget; concatenated."""
    parts = [fn(s) for s in _slices(n, _per_call(model, guidance))]
    return parts[0] if len(parts) == 1 else torch.cat(parts)
