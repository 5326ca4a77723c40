"""Training compute in FLOPs: what a recipe costs, independent of the CPU or GPU that runs it.

Seconds depend on the machine (bf16 is native on some CPUs and emulated, many times slower, on others); FLOPs
do not. The compute of a run is the images it saw times the FLOPs of one training image, counted here by
torch's own operator counter (matrix multiplications and convolutions, forward and backward).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode


def flops_per_image(step: Callable[[], torch.Tensor], batch_size: int) -> float:
    """FLOPs of one training step (``step()`` returns the loss; its backward is counted too) per image."""
    counter = FlopCounterMode(display=False)
    with counter:
        step().backward()
    return counter.get_total_flops() / batch_size


def model_flops_per_image(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> float:
    """FLOPs per image of one training step of a CausalDiffAE (encoder, causal layer, UNet; forward and
    backward) on ``batch``; the gradients it leaves are cleared."""
    was_training = model.training
    model.train()
    try:
        return flops_per_image(lambda: model(batch)["loss"], len(batch["image"]))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
