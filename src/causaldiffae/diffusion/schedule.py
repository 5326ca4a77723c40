"""Forward (noising) process of a DDPM: the beta schedule and the closed-form marginal q(x_t | x_0)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "cosine")


def _linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Betas rising linearly from beta_start to beta_end (Ho et al. 2020, Sec. 4)."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def _cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Betas of the cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(pi/2 * (t/T + s) / (1 + s)); beta_t = 1 - alpha_bar(t+1) /
    alpha_bar(t), clipped at max_beta so that the last steps near alpha_bar = 0 stay finite.
    """

    def f(t: float) -> float:
        return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1.0 - f(i + 1) / f(i), max_beta) for i in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


class NoiseSchedule:
    """Forward process q(x_t | x_0) of DDPM: betas, alphas_cumprod (Ho et al. 2020).

    Training timesteps are 0 .. num_timesteps - 1. Timestep -1 is accepted wherever a timestep is looked up
    and stands for the clean image (alpha_bar = 1), the end point of a DDIM trajectory.

    Attributes:
        num_timesteps: number of training timesteps T.
        betas: (T,) float64 CPU tensor of per-step noise variances.
        alphas_cumprod: (T,) float64 CPU tensor, alpha_bar_t = prod_{s <= t} (1 - beta_s), decreasing.
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        if beta_schedule == "linear":
            if not 0.0 < beta_start <= beta_end < 1.0:
                raise ValueError(
                    f"linear schedule needs 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
                    f"beta_end={beta_end}"
                )
            betas = _linear_betas(num_timesteps, beta_start, beta_end)
        elif beta_schedule == "cosine":
            betas = _cosine_betas(num_timesteps)
        else:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")

        self.num_timesteps = num_timesteps
        self.beta_schedule = beta_schedule
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # Index i + 1 holds alpha_bar_i, index 0 holds 1.0 for t = -1, so one gather serves both cases.
        self._alphas_cumprod_padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        self._padded_on: dict[tuple[torch.device, torch.dtype], Tensor] = {}  # the table where the lookups happen

    def __repr__(self) -> str:
        return f"NoiseSchedule(num_timesteps={self.num_timesteps}, beta_schedule={self.beta_schedule!r})"

    def alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """alpha_bar_t per sample, shaped (B, 1, ..., 1) to broadcast against `like` (B, ...).

        `t` is an integer tensor (B,) (or a scalar) on any device, with values in [-1, T-1]; -1 gives 1.0.
        The result has the dtype and device of `like`. The lookup happens in float64 (float32 on a device
        without float64, e.g. MPS) on t's device, so a training step on a GPU never waits for the host; the
        range check runs where t is on the CPU (an accelerator would have to copy t back, a sync per step).
        """
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"t must be an integer tensor, got dtype {t.dtype}")
        if t.ndim > 1:
            raise ValueError(f"t must have shape (B,) or be a scalar, got shape {tuple(t.shape)}")
        t = t.reshape(-1)
        if t.numel() > 0 and t.device.type == "cpu":
            t_min, t_max = int(t.min()), int(t.max())
            if t_min < -1 or t_max >= self.num_timesteps:
                raise ValueError(
                    f"timesteps must lie in [-1, {self.num_timesteps - 1}], got values in [{t_min}, {t_max}]"
                )
        ab = self._table(t.device)[t + 1]  # (B,)
        return ab.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def _table(self, device: torch.device) -> Tensor:
        """The padded alpha_bar table on ``device``, copied there once."""
        dtype = torch.float32 if device.type == "mps" else torch.float64
        key = (device, dtype)
        if key not in self._padded_on:
            self._padded_on[key] = self._alphas_cumprod_padded.to(device=device, dtype=dtype)
        return self._padded_on[key]

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(ab) x_0, (1 - ab) I) given the noise (Ho et al. 2020, eq. 4).

        x0, noise: (B, ...) of equal shape; t: (B,) integer timesteps. Returns x_t, shaped like x0.
        """
        if x0.shape != noise.shape:
            raise ValueError(
                f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}"
            )
        ab = self.alpha_bar(t, x0)  # (B, 1, ..., 1)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise
