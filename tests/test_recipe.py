"""The training recipe's levers, on values worked out by hand: Min-SNR-gamma weights, the learning-rate schedule,
the FLOPs a training image costs and the compute behind a model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from causaldiffae.training.config import TrainConfig
from causaldiffae.training.flops import flops_per_image, model_flops_per_image, stage_files, training_compute
from conftest import ab_model


@pytest.mark.parametrize("prediction, expected", [
    ("epsilon", [1.0, 1.0, 5 / 9]),  # min(SNR, 5) / SNR at SNR = 1/9, 1, 9
    ("v", [0.1, 0.5, 0.5]),  # min(SNR, 5) / (SNR + 1)
])
def test_min_snr_weights(prediction: str, expected: list[float]) -> None:
    model = ab_model(min_snr_gamma=5.0, prediction=prediction)
    weights = model.loss_weights(torch.tensor([0.1, 0.5, 0.9]))  # alpha_bar: SNR = ab / (1 - ab)
    assert weights.tolist() == pytest.approx(expected, abs=1e-6)
    assert ab_model().loss_weights(torch.tensor([0.1, 0.9])).tolist() == [1.0, 1.0]  # gamma 0: uniform


def test_a_gamma_above_every_snr_gives_the_plain_epsilon_loss() -> None:
    batch = {"image": torch.rand(4, 1, 8, 8), "labels": torch.rand(4, 2)}
    losses = []
    for gamma in (0.0, 1e9):
        model = ab_model(min_snr_gamma=gamma).train()
        torch.manual_seed(3)
        losses.append(model.loss(batch)["mse"].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_training_timesteps() -> None:
    """Uniform covers [0, T); logit-normal at loc -2 puts t / T = sigmoid(-2 + N) below one half with probability
    Phi(2) = 0.977, and its median at T sigmoid(-2) = 0.119 T."""
    torch.manual_seed(0)
    uniform = ab_model().training_timesteps(20000, torch.device("cpu"))
    T = ab_model().config.num_timesteps
    assert uniform.min() == 0 and uniform.max() == T - 1
    assert uniform.float().mean() == pytest.approx((T - 1) / 2, rel=0.03)
    t = ab_model(timestep_sampling="logit_normal", timestep_loc=-2.0).training_timesteps(20000, torch.device("cpu"))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= T - 1
    assert (t < T / 2).float().mean().item() == pytest.approx(0.977, abs=0.01)
    assert t.float().median().item() == pytest.approx(0.119 * T, abs=0.02 * T)
    with pytest.raises(ValueError, match="timestep_scale"):
        ab_model(timestep_sampling="logit_normal", timestep_scale=0.0)


def test_learning_rate_schedule() -> None:
    constant = TrainConfig(lr=1.0, lr_warmup_steps=10, max_steps=110)
    assert [constant.learning_rate(s) for s in (0, 4, 9, 60, 109)] == pytest.approx([0.1, 0.5, 1, 1, 1])
    cosine = TrainConfig(lr=1.0, lr_warmup_steps=10, max_steps=110, lr_schedule="cosine", lr_final=0.1)
    assert cosine.learning_rate(4) == pytest.approx(0.5)  # the warm-up is shared
    assert cosine.learning_rate(9) == pytest.approx(1.0)  # the top of the cosine
    assert cosine.learning_rate(59) == pytest.approx(0.55)  # half way: 0.1 + 0.9 * (1 + cos(pi / 2)) / 2
    assert cosine.learning_rate(109) == pytest.approx(0.1)  # the end: lr * lr_final
    with pytest.raises(ValueError, match="lr_final"):
        TrainConfig(lr_final=1.5)


def test_flops_of_a_linear_layer() -> None:
    """y = W x with W (4, 8): 2 * 8 * 4 FLOPs forward and as many for the weight's gradient, per image."""
    layer = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(5, 8)
    assert flops_per_image(lambda: layer(x).sum(), 5) == 4 * 8 * 4


def test_model_flops_per_image_do_not_depend_on_the_batch() -> None:
    model = ab_model()
    per_image = [model_flops_per_image(model, {"image": torch.rand(b, 1, 8, 8), "labels": torch.rand(b, 2)})
                 for b in (2, 4)]
    assert per_image[0] > 1e4 and per_image[0] == pytest.approx(per_image[1], rel=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_freezing_the_unet_saves_its_weight_gradients() -> None:
    """Each UNet convolution or linear layer costs as many FLOPs for its weight's gradient as for its forward; frozen,
    that gradient goes, and so does the gradient to a layer's input where the input no longer needs one (the
    layers before the condition enters), but z still reaches the loss through the UNet. So freezing the UNet saves
    at least its weight layers' forward FLOPs and at most twice them, and the model counted is left trainable."""
    model = ab_model()
    batch = {"image": torch.rand(4, 1, 8, 8), "labels": torch.rand(4, 2)}
    full = model_flops_per_image(model, batch)
    frozen = model_flops_per_image(model, batch, freeze=["unet"])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.unet(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), torch.rand(4, 4))
    ops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    weight_layers = (ops["aten.convolution"] + ops["aten.addmm"]) / 4  # attention's bmm has no weight
    assert weight_layers < full - frozen <= 2 * weight_layers
    assert all(p.requires_grad for p in model.unet.parameters())


def _stage(folder: Path, prefix: str, steps: int, batch_size: int, freeze: list[str]) -> None:
    (folder / f"{prefix}config.yaml").write_text(yaml.safe_dump({"train": {"batch_size": batch_size,
                                                                              "freeze": freeze}}))
    rows = "".join(f"{s},0.5\n" for s in range(50, steps + 1, 50))
    (folder / f"{prefix}metrics.csv").write_text("step,loss\n" + rows)


def test_training_compute_adds_the_runs_behind_a_model(tmp_path: Path) -> None:
    """A base run of 200 steps of 8 and a fine-tune of 100 steps of 4 with the UNet frozen: 1,600 images at the
    full cost plus 400 at the frozen one, listed oldest first whatever order the files lie in."""
    model = ab_model()
    model.save_pretrained(tmp_path)
    _stage(tmp_path, "", 100, 4, ["unet"])
    _stage(tmp_path, "finetune-1-", 50, 4, ["unet"])
    _stage(tmp_path, "base-", 200, 8, [])
    assert [name for name, _, _ in stage_files(tmp_path)] == ["base", "finetune-1", "final"]
    stages = training_compute(tmp_path)
    batch = {"image": torch.rand(4, 1, 8, 8), "labels": torch.rand(4, 2)}
    full, frozen = model_flops_per_image(model, batch), model_flops_per_image(model, batch, ["unet"])
    assert [(s.steps, s.batch_size, s.images) for s in stages] == [(200, 8, 1600), (50, 4, 200), (100, 4, 400)]
    assert sum(s.flops for s in stages) == pytest.approx(1600 * full + 600 * frozen, rel=1e-9)
    (tmp_path / "metrics.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no config.yaml with a metrics.csv"):
        training_compute(tmp_path)
