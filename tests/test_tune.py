"""`causaldiffae tune`: the depth x guidance grid on a split other than test, its table and its choice."""

from __future__ import annotations

import json

import pytest
import torch

from causaldiffae import CausalDiffAE, ModelConfig
from causaldiffae.data import load_dataset
from causaldiffae.tune import TuneSettings, one_se_choice, tune
from conftest import TINY, TINY_SIZE, exit_code, predicting_no_noise

GRID = TuneSettings(depths=(0.5, 1.0), weights=(1.0, 2.0), n=8, steps=2, split="train", batch_size=4)


@pytest.fixture(scope="module")
def identity(tiny_dataset) -> tuple[CausalDiffAE, object]:
    """A model that predicts eps = 0 returns its input: its counterfactual is the factual image."""
    data = load_dataset(tiny_dataset, TINY_SIZE)
    torch.manual_seed(0)
    model = CausalDiffAE(ModelConfig(graph=data.graph.to_dict(), image_size=TINY_SIZE, channels=3, **TINY)).eval()
    return predicting_no_noise(model), data


def test_identity_model_scores_the_factual_error_everywhere(identity):
    """Returning the input gives the same true-cf L1 at every depth and weight (the factual image's distance to
    the truth, > 0) and a null intervention that reconstructs; the grid covers every pair once."""
    model, data = identity
    result = tune(model, data, GRID, progress=False)
    assert sorted((r["depth"], r["guidance"]) for r in result["grid"]) == [(0.5, 1.0), (0.5, 2.0), (1.0, 1.0),
                                                                           (1.0, 2.0)]
    errors = [r["true_cf_l1"] for r in result["grid"]]
    assert min(errors) > 1 and max(errors) - min(errors) < 0.05  # 0-255 scale
    assert all(r["null_l1"] < 0.05 for r in result["grid"])
    assert result["criterion"] == "true_cf_l1" and result["images"] == 8
    lowest = min(result["grid"], key=lambda r: r["true_cf_l1"])
    assert result["lowest"] == {"depth": lowest["depth"], "guidance": lowest["guidance"]}
    assert result["best"]["guidance"] == 1.0  # every cell ties: the cheaper weight


def test_each_cell_breaks_down_by_the_intervened_variable(identity):
    """8 images, one do() each, the graph's 4 variables in turn: 2 images per variable, and the cell's mean is
    the mean of the 4 per-variable means (equal counts); the identity model returns the factual image whatever
    the depth and weight, so a variable's mean is the same in every cell."""
    model, data = identity
    result = tune(model, data, GRID, progress=False)
    for row in result["grid"]:
        per = row["by_variable"]
        assert list(per) == model.graph.variables
        means = [per[name]["true_cf_l1"] for name in per]
        assert sum(means) / len(means) == pytest.approx(row["true_cf_l1"], rel=1e-5)
    assert len({round(r["by_variable"][model.graph.variables[0]]["true_cf_l1"], 4) for r in result["grid"]}) == 1


def test_one_standard_error_rule_by_hand():
    """Guidance 1 is kept unless the lowest cell beats it by more than one paired standard error."""
    cheap = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # differences to it [0.4, 0.2, 0, 0]: mean 0.15, std sqrt(0.11 / 3) = 0.1915, sem 0.0957 < 0.15 -> not within
    lowest, chosen, paired = one_se_choice({(0.5, 1.0): cheap, (0.5, 1.5): cheap - torch.tensor([0.4, 0.2, 0, 0])})
    assert lowest == chosen == (0.5, 1.5)
    assert paired[0.5, 1.0][0] == pytest.approx(0.15) and paired[0.5, 1.0][1] == pytest.approx(0.0957, abs=1e-4)
    # differences [0.4, -0.2, 0, 0]: mean 0.05, std sqrt(0.19 / 3) = 0.2517, sem 0.1258 >= 0.05 -> within
    lowest, chosen, _ = one_se_choice({(0.5, 1.0): cheap, (0.5, 1.5): cheap - torch.tensor([0.4, -0.2, 0, 0])})
    assert lowest == (0.5, 1.5) and chosen == (0.5, 1.0)


def test_the_test_split_is_refused():
    with pytest.raises(ValueError, match="never see the test split"):
        TuneSettings(split="test")
    with pytest.raises(ValueError, match=r"depths must lie in \(0, 1\]"):
        TuneSettings(depths=(0.0,))


def test_cli_writes_the_table(identity, tmp_path, tiny_dataset, capsys):
    model, _ = identity
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "tune"
    assert exit_code(["tune", str(tmp_path / "model"), "--data", str(tiny_dataset), "--out", str(out), "--split",
                      "train", "--depths", "0.5,1", "--guidance", "1", "--n", "4", "--steps", "2"]) == 0
    assert "chosen on train: depth" in capsys.readouterr().out
    table = (out / "tune.md").read_text()
    assert "| depth | guidance | true-cf L1 (0-255)" in table and "test split is not used" in table
    assert json.loads((out / "tune.json").read_text())["settings"]["depths"] == [0.5, 1.0]
    assert exit_code(["tune", str(tmp_path / "model"), "--data", str(tiny_dataset), "--out", str(out),
                      "--split", "val"]) == 2
    assert "no 'val' split" in capsys.readouterr().err


def test_fewer_images_than_variables_is_a_clear_error(identity, tmp_path, tiny_dataset, capsys):
    """--n 2 with Pendulum's 4 variables leaves two variables without an image to intervene on: one line that says
    so (exit 2), not torch's "stack expects a non-empty TensorList"."""
    model, _ = identity
    model.save_pretrained(tmp_path / "model")
    assert exit_code(["tune", str(tmp_path / "model"), "--data", str(tiny_dataset), "--out", str(tmp_path / "tune"),
                      "--split", "train", "--depths", "1", "--guidance", "1", "--n", "2", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "n = 2 images are fewer than the model's 4 variables" in err and "--n 4" in err


def test_morphomnist_cells_report_measured_error_and_class_kept(tmp_path):
    """On MorphoMNIST each cell also measures the intervened variable (morphometry) and, with a classifier, the
    share of counterfactuals read as the factual class: a model that returns its input keeps every class (1.0)
    and is measured as far off as its input, the same in every cell."""
    from causaldiffae.data import morphomnist
    from causaldiffae.metrics.predictors import Predictors

    root = morphomnist.generate(tmp_path / "mm", limit=4, progress=False, workers=1)
    data = load_dataset(root, 28, class_column="digit")
    torch.manual_seed(0)
    model = CausalDiffAE(ModelConfig(graph=data.graph.to_dict(), image_size=28, channels=1, num_classes=10,
                                     **TINY)).eval()
    predictors = Predictors(data.graph, 28, 1, width=4, num_classes=10, class_column="digit").eval()
    grid = TuneSettings(depths=(0.5, 1.0), weights=(1.0,), n=4, steps=2, split="val", batch_size=4)
    result = tune(model, data, grid, predictors=predictors, progress=False)
    assert [r["class_kept"] for r in result["grid"]] == [1.0, 1.0]
    measured = [r["measured"] for r in result["grid"]]
    assert measured[0] > 0 and measured[0] == pytest.approx(measured[1], abs=1e-3)
    assert [r["executed"] for r in result["grid"]] == pytest.approx([0.0, 0.0], abs=1e-3)  # it changes nothing
