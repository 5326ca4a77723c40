"""Diffusion math without weights: the DDPM noise schedule and deterministic DDIM sampling/inversion."""

from . import ddim
from .ddim import Denoiser
from .schedule import NoiseSchedule

__all__ = ["Denoiser", "NoiseSchedule", "ddim"]
