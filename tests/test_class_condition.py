"""The optional extra class condition of the UNet (MorphoMNIST's digit in the reference), end to end."""

from __future__ import annotations

import pytest
import torch

from causaldiffae import CausalDiffAE, counterfactual
from causaldiffae.cli import main
from causaldiffae.data import pendulum
from causaldiffae.data.base import load_dataset, write_dataset
from causaldiffae.graph import CausalGraph
from causaldiffae.run_data import run_dataset
from causaldiffae.training import load_run_config, train
from conftest import TINY_CONFIG, TINY_SIZE


@pytest.fixture(scope="module")
def class_data(tmp_path_factory):
    rows = [dict(r, kind=float(i % 3)) for i, r in enumerate(pendulum.samples()[::300][:24])]
    images = [pendulum.render(r["angle"], r["light"], TINY_SIZE) for r in rows]
    return write_dataset(tmp_path_factory.mktemp("cls") / "d", CausalGraph.from_dict(pendulum.GRAPH), rows, images,
                         extra_columns=["kind"])


def _config(root, *extra):
    return load_run_config(TINY_CONFIG, ["data.name=folder", f"data.root={root}", "train.max_steps=3", *extra])


@pytest.fixture(scope="module")
def class_run(class_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clsrun") / "run"
    return train(_config(class_data, "data.class_column=kind", "model.num_classes=3"), out, progress=False)


def test_dataset_reads_the_class_column(class_data):
    data = load_dataset(class_data, class_column="kind")
    assert data.classes.tolist() == [i % 3 for i in range(24)]
    assert data.batch([0, 4])["class"].tolist() == [0, 1]
    assert load_dataset(class_data).classes is None


def test_class_changes_the_decoded_image(class_run):
    model = CausalDiffAE.from_pretrained(class_run)
    assert model.config.num_classes == 3
    with torch.no_grad():
        for p in model.unet.parameters():  # the tiny run barely moved the zero-initialised output layers
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    a = counterfactual(model, x, {"angle": 10.0}, steps=3, classes=torch.tensor([0, 0])).images
    b = counterfactual(model, x, {"angle": 10.0}, steps=3, classes=torch.tensor([2, 2])).images
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="class"):
        counterfactual(model, x, {}, steps=2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        counterfactual(model, x, {}, steps=2, classes=torch.tensor([0, 7]))


def test_cli_takes_classes_from_the_data_or_class_flag(class_run, tmp_path, capsys):
    out = tmp_path / "cf.png"
    assert main(["counterfactual", str(class_run), "--do", "angle=5", "--index", "0:2", "--steps", "2",
                 "--out", str(out)]) == 0
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(pendulum.render(0.0, 80.0, TINY_SIZE)).save(image)
    assert main(["counterfactual", str(class_run), "--image", str(image), "--steps", "2", "--out", str(out)]) == 2
    assert "--class" in capsys.readouterr().err
    assert main(["counterfactual", str(class_run), "--image", str(image), "--class", "1", "--steps", "2",
                 "--out", str(out)]) == 0


@pytest.mark.parametrize("extra, message", [
    (["data.class_column=kind"], "go together"),
    (["model.num_classes=3"], "go together"),
    (["data.class_column=kind", "model.num_classes=2"], "holds 2"),
    (["data.class_column=nope", "model.num_classes=3"], "nope"),
])
def test_inconsistent_class_settings_are_errors(class_data, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train(_config(class_data, *extra), tmp_path / "run", progress=False)


def test_a_class_model_without_its_run_config_names_the_missing_column(class_run, class_data, tmp_path):
    """A model folder copied without config.yaml cannot say which column holds its class: one line says so."""
    CausalDiffAE.from_pretrained(class_run).save_pretrained(tmp_path / "bare")
    assert run_dataset(class_run, class_data).classes is not None
    with pytest.raises(ValueError, match=r"num_classes=3.*data\.class_column"):
        run_dataset(tmp_path / "bare", class_data)
