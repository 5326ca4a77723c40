"""Training: the run configuration, the loop and its checkpoints."""

from .config import DataConfig, RunConfig, TrainConfig, load_run_config
from .loop import train

__all__ = ["DataConfig", "RunConfig", "TrainConfig", "load_run_config", "train"]
