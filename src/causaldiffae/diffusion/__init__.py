"""Diffusion math without weights: the DDPM noise schedule, deterministic DDIM sampling and inversion, and the
DPM-Solver++(2M) decoder."""

from . import ddim, dpm_solver
from .ddim import Denoiser
from .schedule import NoiseSchedule

__all__ = ["Denoiser", "NoiseSchedule", "ddim", "dpm_solver"]
