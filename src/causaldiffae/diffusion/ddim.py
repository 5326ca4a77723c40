"""Deterministic DDIM (eta = 0): sampling and inversion.

Song et al. 2021, "Denoising Diffusion Implicit Models" (arXiv:2010.02502).

With eta = 0, eq. 12 of the paper drops its noise term and becomes a deterministic map between two noise
levels; in the variables x_bar = x / sqrt(ab) and sigma = sqrt((1 - ab) / ab) it is one Euler step of the
probability-flow ODE d x_bar = eps(x, t) d sigma (eq. 14). Running that step towards less noise decodes
(`sample`); running it towards more noise encodes (`invert`), which is how a diffusion autoencoder obtains the
stochastic code x_T of an image.

A trajectory is a list of K ascending training timesteps tau_1 < ... < tau_K (see `timesteps`), plus the
clean image below tau_1, written as timestep -1 (alpha_bar = 1):

    invert:  x_0 (clean, -1) -> x_{tau_1} -> ... -> x_{tau_K}
    sample:  x_{tau_K} -> ... -> x_{tau_1} -> x_0 (clean, -1)

Both walk exactly the same timesteps, so they are approximate inverses; the mismatch comes only from where
the noise is predicted and vanishes as K grows. `invert_exact` also records what each decoding step misses
(one more network call), and `sample(..., residuals=...)` adds it back: an exact inverse at any K.

``sample(..., eta=...)`` is the stochastic member of the family (eq. 12 with sigma_t = eta * the DDPM posterior
std): it moves part of the noise direction into fresh Gaussian noise at each step, which the caller supplies
(``fresh``), so a seeded draw reproduces; eta = 0 is the deterministic update above, bit for bit.

The functions here hold no weights: the network is a `Denoiser` closure supplied by the caller, and gradients
are neither forced on nor off (wrap calls in torch.no_grad / torch.inference_mode as needed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .schedule import NoiseSchedule

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""eps = denoiser(x_t, t): predicted noise (B, ...) for x_t (B, ...) at LongTensor timesteps t (B,) on
x_t's device. The caller closes over the condition (e.g. the semantic code) and any guidance."""
#: Where a trajectory's K timesteps sit: "leading" starts at 0 (inversion), "trailing" ends at T - 1 (sampling).
Spacing = Literal["leading", "trailing"]


class Sampler(Protocol):
    """What ``sample`` here and ``dpm_solver.sample`` share: decode x_{tau_K} to the clean image."""

    def __call__(self, denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, steps: int = ..., depth: float = ...,
                 progress: bool = ..., clip: bool = ..., spacing: Spacing = ...) -> Tensor: ...


def timesteps(num_train_timesteps: int, steps: int, depth: float = 1.0, spacing: Spacing = "leading") -> list[int]:
    """Ascending training timesteps [tau_1, ..., tau_K] of a `steps`-step DDIM trajectory.

    "leading" (diffusers' DDIMScheduler default): tau_i = (i - 1) * (span // steps), so the list starts at 0;
    with depth = 1 it is diffusers' `set_timesteps(steps)` in ascending order. Its top, T - T/K (980 for
    T = 1000, K = 50), is not pure noise, so generation from N(0, I) uses "trailing" (Lin et al. 2024, "Common
    diffusion noise schedules and sample steps are flawed"): tau_i = round(i * span / steps) - 1, whose top is
    span - 1 (T - 1 at depth 1).
    `depth` in (0, 1] restricts the trajectory to [0, depth * T) (span = round(depth * T)): depth = 0.5
    inverts only to about t = T/2, keeping part of the image in x_{tau_K}.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if not 0.0 < depth <= 1.0:
        raise ValueError(f"depth must lie in (0, 1], got {depth}")
    span = round(depth * num_train_timesteps)
    if steps < 1 or steps > span:
        raise ValueError(
            f"steps must lie in [1, {span}] (= round(depth * num_train_timesteps) with depth={depth}, "
            f"num_train_timesteps={num_train_timesteps}), got {steps}"
        )
    if spacing == "trailing":
        return [round((i + 1) * span / steps) - 1 for i in range(steps)]
    if spacing != "leading":
        raise ValueError(f"spacing must be 'leading' or 'trailing', got {spacing!r}")
    stride = span // steps
    return [i * stride for i in range(steps)]


def _alpha_bar(schedule: NoiseSchedule, t: int) -> float:
    """alpha_bar_t as a Python float (float64); t = -1 is the clean image (alpha_bar = 1)."""
    if not -1 <= t < schedule.num_timesteps:
        raise ValueError(f"timestep must lie in [-1, {schedule.num_timesteps - 1}], got {t}")
    return 1.0 if t == -1 else float(schedule.alphas_cumprod[t])


def noise_std(schedule: NoiseSchedule, t: int, t_prev: int, eta: float) -> float:
    """The std of the fresh noise of a stochastic DDIM step t -> t_prev (eq. 16 of Song et al. 2021): eta times
    sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)); eta = 1 is DDPM's posterior std, and the step onto the
    clean image (t_prev = -1) adds none."""
    ab, ab_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    return eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))


def _transfer(schedule: NoiseSchedule, eps: Tensor, t_from: int, t_to: int, x: Tensor, clip: bool = False,
              std: float = 0.0, fresh: Tensor | None = None) -> Tensor:
    """Move x from noise level t_from to t_to along the DDIM update (Song et al. 2021, eq. 12): deterministic
    (eta = 0) unless ``std`` > 0, which then adds ``std * fresh`` and shortens the noise direction to match."""
    if eps.shape != x.shape:
        raise ValueError(f"eps and x_t must have the same shape, got {tuple(eps.shape)} and {tuple(x.shape)}")
    # 1. Noise levels of both ends; -1 means the clean image, alpha_bar = 1.
    ab_from = _alpha_bar(schedule, t_from)
    ab_to = _alpha_bar(schedule, t_to)
    # 2. "Predicted x_0" of eq. 12: undo the forward marginal x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps.
    #    Unclipped by default, so that the map stays invertible; generation from pure noise may clip it to
    #    [-1, 1] (diffusers' clip_sample), re-deriving eps from the clipped prediction.
    x0_pred = (x - math.sqrt(1.0 - ab_from) * eps) / math.sqrt(ab_from)
    if clip:
        x0_pred = x0_pred.clamp(-1.0, 1.0)
        eps = (x - math.sqrt(ab_from) * x0_pred) / math.sqrt(1.0 - ab_from)
    # 3. "Direction pointing to x_t" of eq. 12; sigma_t = std (0 for eta = 0).
    direction = math.sqrt(1.0 - ab_to - std**2) * eps
    # 4. Re-noise the prediction to the target level; eq. 12's random-noise term only for std > 0.
    out = math.sqrt(ab_to) * x0_pred + direction
    if std > 0:
        if fresh is None or fresh.shape != x.shape:
            raise ValueError(f"a stochastic DDIM step needs fresh noise shaped like x_t {tuple(x.shape)}, got "
                             f"{None if fresh is None else tuple(fresh.shape)}")
        out = out + std * fresh
    return out


def step(schedule: NoiseSchedule, eps: Tensor, t: int, t_prev: int, x_t: Tensor, clip: bool = False,
         eta: float = 0.0, fresh: Tensor | None = None) -> Tensor:
    """One DDIM denoising update x_t -> x_{t_prev} (t_prev < t; t_prev = -1 gives the clean image).

    eps: the noise predicted at (x_t, t), shaped like x_t (B, ...). Returns x_{t_prev}, shaped like x_t.
    ``clip`` clamps the predicted x0 to [-1, 1]: for sampling from pure noise only, never after an inversion.
    ``eta`` > 0 is the stochastic update, adding ``noise_std(...) * fresh`` (``fresh`` standard normal, like x_t):
    diffusers' ``DDIMScheduler.step(..., eta, variance_noise=fresh)``.
    """
    if not t_prev < t:
        raise ValueError(f"step goes towards less noise and needs t_prev < t, got t={t}, t_prev={t_prev}")
    return _transfer(schedule, eps, t, t_prev, x_t, clip, noise_std(schedule, t, t_prev, eta) if eta else 0.0, fresh)


def invert_step(schedule: NoiseSchedule, eps: Tensor, t: int, t_next: int, x_t: Tensor) -> Tensor:
    """One DDIM encoding update x_t -> x_{t_next} (t_next > t; t = -1 starts from the clean image).

    The same eq. 12 map as `step`, run forward in time; exact inverse of `step` for the same eps, so the
    only inversion error comes from evaluating eps at x_t instead of the (unknown) x_{t_next}.
    """
    if not t_next > t:
        raise ValueError(
            f"invert_step goes towards more noise and needs t_next > t, got t={t}, t_next={t_next}"
        )
    return _transfer(schedule, eps, t, t_next, x_t)


def _progress(items: list[int], enabled: bool, desc: str) -> Iterable[int]:
    """Wrap the timestep loop in a tqdm bar when asked."""
    return tqdm(items, desc=desc, leave=False) if enabled else items


def _batch_t(t: int, x: Tensor) -> Tensor:
    """Timestep t as the (B,) LongTensor on x's device that a Denoiser expects."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def sample(
    denoiser: Denoiser,
    x_T: Tensor,
    schedule: NoiseSchedule,
    steps: int = 50,
    depth: float = 1.0,
    progress: bool = False,
    clip: bool = False,
    spacing: Spacing = "leading",
    residuals: Tensor | None = None,
    eta: float = 0.0,
    fresh: Tensor | None = None,
) -> Tensor:
    """Decode x_{tau_K} (B, ...) down to the clean image x_0 (B, ...) in `steps` DDIM steps.

    The denoiser is evaluated at each tau_K, ..., tau_1 on the current point; the last step goes from tau_1
    to alpha_bar = 1. Use the same (steps, depth) as the `invert` call that produced x_T. ``clip`` clamps
    each predicted x0 to [-1, 1] and ``spacing="trailing"`` starts at t = T - 1: both for generation from
    pure noise (leave them off after inversion). ``residuals`` (steps, B, ...) from `invert_exact` are added
    after the steps that land on x_0, x_{tau_1}, ..., x_{tau_{K-1}} (``residuals[i]`` after the step onto level
    i, counted from the clean image), which makes the decoding retrace that inversion exactly. ``eta`` in [0, 1]
    makes each step stochastic (``step``), with ``fresh`` (steps, B, ...) standard normal noise, ``fresh[i]`` for the
    step onto level i as ``residuals[i]``; with residuals too, the decoding retraces the inversion only at eta = 0.
    """
    trajectory = timesteps(schedule.num_timesteps, steps, depth, spacing)
    for name, extra in (("residuals", residuals), ("fresh", fresh if eta else None)):
        if extra is not None and tuple(extra.shape) != (steps, *x_T.shape):
            raise ValueError(f"{name} must have shape {(steps, *x_T.shape)} (steps, *x_T.shape), "
                             f"got {tuple(extra.shape)}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM's noise), got {eta}")
    if eta and fresh is None:
        raise ValueError("eta > 0 needs fresh noise (steps, *x_T.shape) for its steps")
    targets = [-1] + trajectory[:-1]  # targets[i] is the level below trajectory[i]
    x = x_T
    for i in _progress(list(range(steps - 1, -1, -1)), progress, "DDIM sample"):
        t, t_prev = trajectory[i], targets[i]
        eps = denoiser(x, _batch_t(t, x))
        x = step(schedule, eps, t, t_prev, x, clip, eta, None if fresh is None else fresh[i])
        if residuals is not None:
            x = x + residuals[i]
    return x


def invert(
    denoiser: Denoiser,
    x0: Tensor,
    schedule: NoiseSchedule,
    steps: int = 50,
    depth: float = 1.0,
    progress: bool = False,
) -> Tensor:
    """Encode the clean image x0 (B, ...) up to x_{tau_K} (B, ...) in `steps` DDIM steps (deterministic).

    Step i moves x_{tau_{i-1}} -> x_{tau_i} with eps evaluated at the current point and its own timestep,
    (x_{tau_{i-1}}, tau_{i-1}): the first-order choice of improved-diffusion's `ddim_reverse_sample`, since
    x_{tau_i} is what is being computed. The first step starts from the clean image (alpha_bar = 1), which
    has no training timestep; the denoiser sees it at tau_1 (= 0, the least noisy training timestep).
    So the denoiser is called at tau_1, tau_1, tau_2, ..., tau_{K-1}.
    """
    return _invert(denoiser, x0, schedule, steps, depth, progress, residuals=False)[0]


def invert_exact(
    denoiser: Denoiser,
    x0: Tensor,
    schedule: NoiseSchedule,
    steps: int = 50,
    depth: float = 1.0,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """`invert`, plus the residual of each step of the decoding that retraces it: (x_{tau_K}, residuals).

    ``sample`` from x_{tau_K} misses x0 because it predicts the noise at the upper end of each step where the
    inversion predicted it at the lower end. ``residuals[i]`` (shape (steps, B, ...)) is what the decoding step
    onto level i (0 = the clean image, i = tau_i above) misses there: x_i - step(eps(x_{i+1}), x_{i+1}).
    ``sample(..., residuals=residuals)`` with the same denoiser then returns x0 up to rounding at any number of
    steps, and with another condition it decodes from the same exogenous state. The noise predictions that the
    decoding makes at x_{tau_1}, ..., x_{tau_{K-1}} are the inversion's own (same point, timestep and
    condition); only the top one, at x_{tau_K}, is new: steps + 1 calls in all.
    """
    return _invert(denoiser, x0, schedule, steps, depth, progress, residuals=True)


def _invert(denoiser: Denoiser, x0: Tensor, schedule: NoiseSchedule, steps: int, depth: float, progress: bool,
            residuals: bool) -> tuple[Tensor, Tensor]:
    """The inversion loop of `invert` and `invert_exact`: x_{tau_K} and, when asked, the residuals (else empty)."""
    trajectory = timesteps(schedule.num_timesteps, steps, depth)
    levels = [-1] + trajectory  # levels[i] is where inversion step i starts, levels[i + 1] where it ends
    x, below = x0, x0
    missed: list[Tensor] = []
    for i in _progress(list(range(steps)), progress, "DDIM invert"):
        t, t_next = levels[i], levels[i + 1]
        eps = denoiser(x, _batch_t(t if t >= 0 else trajectory[0], x))
        if residuals and i > 0:  # the decoding step from this level onto the one below predicts this same eps
            missed.append(below - step(schedule, eps, t, levels[i - 1], x))
        below, x = x, invert_step(schedule, eps, t, t_next, x)
    if not residuals:
        return x, x.new_empty(0)
    eps = denoiser(x, _batch_t(levels[-1], x))
    missed.append(below - step(schedule, eps, levels[-1], levels[-2], x))
    return x, torch.stack(missed)
