"""Training end to end on MorphoMNIST and on a user folder dataset with a quarter of its labels missing."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from causaldiffae import CausalDiffAE
from causaldiffae.cli import main
from causaldiffae.data import morphomnist
from causaldiffae.data.base import load_dataset
from conftest import CONFIGS, TINY_CONFIG

TINY_MODEL = ["model.latent_dim=4", "model.encoder_channels=8", "model.mechanism_hidden=16",
              "model.unet_channels=8", "model.channel_mult=[1,2]", "model.attention_levels=[1]",
              "model.num_timesteps=100", "train.batch_size=8", "train.grid_images=2", "train.grid_steps=3",
              "train.sample_every=0", "train.checkpoint_every=0", "train.log_every=5"]


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    return morphomnist.generate(tmp_path_factory.mktemp("mm") / "morpho", limit=40, progress=False, workers=1)


@pytest.mark.parametrize("with_digit", [False, True])
def test_morphomnist_config_trains_and_counterfactuals(mnist_root, tmp_path, with_digit):
    extra = [] if with_digit else ["data.class_column=null", "model.num_classes=0"]  # the config has the digit
    run = tmp_path / "run"
    argv = ["train", str(CONFIGS / "morphomnist.yaml"), "--out", str(run), "--set", "data.name=folder",
            "--set", f"data.root={mnist_root}", "--set", "train.max_steps=20"]
    for item in [*TINY_MODEL, *extra]:
        argv += ["--set", item]
    assert main(argv) == 0
    model = CausalDiffAE.from_pretrained(run)
    assert model.config.channels == 1 and model.config.image_size == 28
    assert model.config.num_classes == (10 if with_digit else 0)
    out = tmp_path / "cf.png"
    assert main(["counterfactual", str(run), "--do", "thickness=1:5:3", "--index", "0:2", "--steps", "2",
                 "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [c["do"]["thickness"] for c in report["columns"]] == [1.0, 3.0, 5.0]


def test_folder_dataset_with_a_quarter_of_labels_missing(tiny_dataset, tmp_path):
    root = tmp_path / "weak"
    shutil.copytree(tiny_dataset, root, ignore=shutil.ignore_patterns("cache"))
    rows = list(csv.DictReader((root / "labels.csv").open()))
    variables = ["angle", "light", "shadow_length", "shadow_position"]
    for i, row in enumerate(rows):  # blank one label in every row: 25% of the labels are missing
        row[variables[i % 4]] = ""
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    data = load_dataset(root)
    assert data.labels.isnan().float().mean().item() == pytest.approx(0.25)
    run = tmp_path / "run"
    argv = ["train", str(TINY_CONFIG), "--out", str(run), "--set", "data.name=folder", "--set", f"data.root={root}",
            "--set", "train.max_steps=10"]
    assert main(argv) == 0
    metrics = list(csv.DictReader((run / "metrics.csv").open()))
    assert all(float(m["label"]) > 0 for m in metrics)  # present labels still train the prior
    assert main(["counterfactual", str(run), "--do", "light=100", "--index", "0:2", "--steps", "2",
                 "--out", str(tmp_path / "cf.png")]) == 0
