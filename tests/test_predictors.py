"""The anti-causal attribute predictors: training, held-out errors, persistence, input checks and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from causaldiffae.data import load_dataset
from causaldiffae.data.base import ImageDataset
from causaldiffae.graph import CausalGraph
from causaldiffae.metrics.predictors import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Predictors,
    interventional_errors,
    load_predictors,
    save_predictors,
    train_predictors,
)
from conftest import TINY_SIZE, exit_code

WIDTH = 8


@pytest.fixture(scope="module")
def data(tiny_dataset: Path) -> ImageDataset:
    return load_dataset(tiny_dataset)


@pytest.fixture(scope="module")
def trained(data: ImageDataset) -> Predictors:
    return train_predictors(data, steps=5, batch_size=16, progress=False, width=WIDTH)


@pytest.fixture(scope="module")
def saved(trained: Predictors, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_predictors(trained, tmp_path_factory.mktemp("predictors") / "p")


def _images(data: ImageDataset, n: int = 6) -> torch.Tensor:
    return data.batch(torch.arange(n))["image"]


def test_training_reports_finite_held_out_errors(trained: Predictors, data: ImageDataset):
    assert trained.variables == data.graph.variables
    assert trained.held_out_split == "test"
    for name in trained.variables:
        err = trained.held_out[name]
        assert err["n"] == data.splits.count("test")
        assert math.isfinite(err["mae"]) and math.isfinite(err["mae_normalized"]) and err["mae"] >= 0
    assert not trained.training
    predicted = trained.predict(_images(data))
    assert predicted.shape == (6, len(data.graph)) and torch.isfinite(predicted).all()


def test_pendulum_predictors_also_train_on_interventional_renders(trained: Predictors, data: ImageDataset):
    """By default one true counterfactual per train image joins the training set (the SCM is known); 0 turns
    it off; a dataset without a known SCM cannot have them."""
    train = data.splits.count("train")
    assert trained.training_settings["train_images"] == 2 * train
    assert trained.training_settings["interventional_images"] == train
    plain = train_predictors(data, steps=1, batch_size=16, progress=False, width=WIDTH, interventional=0)
    assert plain.training_settings["interventional_images"] == 0 and plain.training_settings["train_images"] == train
    unknown = ImageDataset(data.root, CausalGraph.from_dict({"variables": [{"name": "a", "normalization":
                           {"mean": 0, "std": 1}}], "edges": []}), data.files, data.splits, data.images,
                           data.labels[:, :1])
    with pytest.raises(ValueError, match="known SCM"):
        train_predictors(unknown, steps=1, progress=False, width=WIDTH, interventional=5)


class _Constant(Predictors):
    """Reads nothing: every image gets the same raw labels."""

    def __init__(self, graph: CausalGraph, values: list[float]) -> None:
        super().__init__(graph, TINY_SIZE, 3, width=1)
        self.values = torch.tensor(values)

    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return self.values.expand(len(x), -1).clone()


def test_interventional_errors_by_hand(data: ImageDataset):
    """A predictor that reads nothing moves nothing, and its error is |constant - true label| / std of the very
    counterfactuals the check draws (same seed); movement is listed for non-descendants only."""
    from causaldiffae.metrics.truth import true_scm

    test = data.split("test")
    constant = [0.0, 90.0, 7.0, 10.0]
    errors = interventional_errors(_Constant(data.graph, constant), test, count=12, seed=3)
    assert {k: sorted(v["moved"]) for k, v in errors.items()} == {
        "angle": ["light"], "light": ["angle"], "shadow_length": ["angle", "light", "shadow_position"],
        "shadow_position": ["angle", "light", "shadow_length"]}
    generator = torch.Generator().manual_seed(3)
    for name in data.graph.variables:
        _, labels, _ = true_scm(test).random_interventions(12, generator, on=[name])
        for i, var in enumerate(data.graph.nodes):
            expected = (labels[:, i] - constant[i]).abs().mean().item() / var.scale[1]
            assert errors[name]["error"][var.name] == pytest.approx(expected, rel=1e-5)
        assert all(m == 0 for m in errors[name]["moved"].values())


def test_training_is_deterministic_for_a_seed(data: ImageDataset, trained: Predictors):
    again = train_predictors(data, steps=5, batch_size=16, progress=False, width=WIDTH)
    x = _images(data)
    assert torch.equal(again.predict(x), trained.predict(x))


def test_save_load_round_trips_bit_identical(trained: Predictors, saved: Path, data: ImageDataset):
    loaded = load_predictors(saved)
    x = _images(data)
    assert torch.equal(loaded.predict(x), trained.predict(x))
    assert torch.equal(loaded.features(x), trained.features(x))
    assert loaded.held_out == trained.held_out and loaded.graph == trained.graph
    assert loaded.held_out_interventional == trained.held_out_interventional
    assert set(trained.held_out_interventional) == set(data.graph.variables)
    meta = json.loads((saved / CONFIG_NAME).read_text())
    assert meta["format"] == "causaldiffae-predictors" and meta["image_size"] == TINY_SIZE
    assert meta["training"]["steps"] == 5 and meta["width"] == WIDTH


def test_features_have_the_documented_width(trained: Predictors, data: ImageDataset):
    feats = trained.features(_images(data, 5))
    assert feats.shape == (5, 4 * WIDTH * len(data.graph)) == (5, trained.feature_dim)
    assert trained.features(_images(data, 5), batch_size=2).allclose(feats, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 1, TINY_SIZE, TINY_SIZE), (3, TINY_SIZE, TINY_SIZE)])
def test_wrong_image_shape_raises(trained: Predictors, shape):
    with pytest.raises(ValueError, match=rf"\(B, 3, {TINY_SIZE}, {TINY_SIZE}\).*got"):
        trained.predict(torch.rand(shape))


def test_uint8_images_and_missing_classifier_raise(trained: Predictors, data: ImageDataset):
    with pytest.raises(ValueError, match="floats in \\[0, 1\\]"):
        trained.features(data.images[:2])
    with pytest.raises(ValueError, match="no class classifier"):
        trained.predict_class(_images(data, 2))


def test_corrupt_or_missing_files_raise_naming_them(saved: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CONFIG_NAME).write_bytes((saved / CONFIG_NAME).read_bytes())
    (broken / WEIGHTS_NAME).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ValueError, match=f"corrupt predictors weights .*{WEIGHTS_NAME}"):
        load_predictors(broken)
    (broken / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_predictors(broken)
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        load_predictors(tmp_path)
    (broken / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=f"corrupt predictors file .*{CONFIG_NAME}"):
        load_predictors(broken)


def test_non_finite_weights_are_refused_at_load_naming_the_file_and_tensor(saved: Path, tmp_path: Path):
    """As a model's: refused when loaded, not later as "factual_feats contains NaN" in an evaluation."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan"
    broken.mkdir()
    (broken / CONFIG_NAME).write_bytes((saved / CONFIG_NAME).read_bytes())
    state = load_file(str(saved / WEIGHTS_NAME))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = math.nan
    save_file(state, str(broken / WEIGHTS_NAME))
    with pytest.raises(ValueError, match=rf"{broken / WEIGHTS_NAME} holds NaN or inf in 1 tensor\(s\) \({name}\)"):
        load_predictors(broken)


def test_mismatched_weights_raise(saved: Path, tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    meta = json.loads((saved / CONFIG_NAME).read_text())
    (other / CONFIG_NAME).write_text(json.dumps({**meta, "width": WIDTH * 2}))
    (other / WEIGHTS_NAME).write_bytes((saved / WEIGHTS_NAME).read_bytes())
    with pytest.raises(ValueError, match=f"{WEIGHTS_NAME} does not match"):
        load_predictors(other)


def test_dataset_without_train_split_or_labels_raises(data: ImageDataset):
    with pytest.raises(ValueError, match="no train split"):
        train_predictors(data.split("test"), steps=1, progress=False)
    unlabelled = data.subset(list(range(len(data))))
    unlabelled.labels[:, 1] = math.nan
    with pytest.raises(ValueError, match="'light' has no labels in the train split"):
        train_predictors(unlabelled, steps=1, progress=False)
    with pytest.raises(ValueError, match="class_column='digit'"):
        train_predictors(data, class_column="digit", steps=1, progress=False)


def _brightness_dataset(n: int = 320) -> ImageDataset:
    """Flat 8x8 grey images whose brightness is the label b, class floor(3 b); a quarter of labels missing."""
    b = torch.rand(n, generator=torch.Generator().manual_seed(1))
    images = (b * 255).round().to(torch.uint8)[:, None, None, None].expand(n, 1, 8, 8).contiguous()
    labels = (images[:, 0, 0, 0].float() / 255)[:, None].clone()
    labels[::4] = math.nan
    graph = CausalGraph.from_dict({"variables": [{"name": "b", "normalization": {"min": 0.0, "max": 1.0}}]})
    splits = ["test" if i % 5 == 0 else "train" for i in range(n)]
    return ImageDataset(Path("synthetic"), graph, [f"{i}.png" for i in range(n)], splits, images, labels,
                        (b * 3).long().clamp(max=2))


def test_learning_reaches_a_small_error():
    data = _brightness_dataset()
    p = train_predictors(data, class_column="bright", steps=300, batch_size=32, lr=3e-3, progress=False, width=8)
    assert p.held_out["b"]["n"] == 48
    assert p.held_out["b"]["mae_normalized"] < 0.05, p.held_out
    assert p.held_out["bright"]["accuracy"] > 0.95, p.held_out
    x = data.batch(torch.arange(4))["image"]
    assert p.predict_class(x).dtype == torch.long and p.predict_class(x).shape == (4,)


def test_cli_trains_and_saves(tiny_dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "p"
    assert exit_code(["predictors", "train", str(tiny_dataset), "--out", str(out), "--steps", "5"]) == 0
    assert (out / WEIGHTS_NAME).is_file() and (out / CONFIG_NAME).is_file()
    printed = capsys.readouterr().out
    assert "angle: MAE" in printed and "saved" in printed and "do(shadow_length): shadow_length error" in printed
    assert load_predictors(out).image_size == TINY_SIZE


def test_cli_unknown_dataset_is_a_one_line_error(tmp_path: Path, capsys):
    assert exit_code(["predictors", "train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("causaldiffae: error:") and "neither a dataset folder" in err and len(err.splitlines()) == 1
