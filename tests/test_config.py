"""Run configs: every shipped YAML loads; --set overrides parse as YAML; bad keys/types/values are named."""

from __future__ import annotations

import pytest
import yaml

from causaldiffae.training import RunConfig, load_run_config
from causaldiffae.training.config import help_text
from conftest import CONFIGS, TINY_CONFIG

CONFIG_FILES = sorted(CONFIGS.rglob("*.yaml"))


def test_configs_folder_is_not_empty():
    assert TINY_CONFIG in CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_run_config(path)
    assert isinstance(config, RunConfig)
    # the model section must build a valid ModelConfig once the graph and data are known
    model_config = config.model_config({"variables": ["a"]}, config.data.image_size, 3)
    assert model_config.image_size == config.data.image_size
    if isinstance(config.graph, str) and path.parent == CONFIGS:
        candidates = [CONFIGS.parent / config.graph, path.parent / config.graph]
        assert any(c.is_file() for c in candidates), config.graph


def test_tiny_config_values():
    config = load_run_config(TINY_CONFIG)
    assert config.data.image_size == 16
    assert config.model["unet_channels"] == 8
    assert config.model["channel_mult"] == [1, 2]
    assert config.model["latent_dim"] == 4
    assert config.model["num_timesteps"] == 100
    assert config.graph is None
    # keys the YAML does not set keep the dataclass defaults
    assert config.model["p_uncond"] == 0.0
    assert config.train.lr == 2e-4


def test_no_path_gives_defaults():
    config = load_run_config(None)
    assert config.train.max_steps == 10000
    assert config.data.name == "pendulum"


def test_overrides_take_effect():
    config = load_run_config(TINY_CONFIG, [
        "train.batch_size=4",  # int
        "train.lr=0.001",  # float
        "train.cpu=true",  # bool
        "model.channel_mult=[1, 2, 4]",  # list
        "train.max_minutes=null",  # null
        "data.root=null",
        "model.p_uncond=0.1",
        "model.beta_schedule=cosine",
        "data.resize=false",
        "graph=configs/graphs/mine.yaml",
    ])
    assert config.train.batch_size == 4
    assert config.train.lr == 0.001 and isinstance(config.train.lr, float)
    assert config.train.cpu is True
    assert config.model["channel_mult"] == [1, 2, 4]
    assert config.train.max_minutes is None
    assert config.data.root is None
    assert config.model["p_uncond"] == 0.1
    assert config.model["beta_schedule"] == "cosine"
    assert config.graph == "configs/graphs/mine.yaml"
    # untouched keys keep the file's values
    assert config.data.image_size == 16


def test_later_override_wins():
    config = load_run_config(TINY_CONFIG, ["train.batch_size=4", "train.batch_size=6"])
    assert config.train.batch_size == 6


def test_int_given_for_float_becomes_float():
    config = load_run_config(TINY_CONFIG, ["train.lr=1", "train.max_minutes=5"])
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.max_minutes == 5.0


def test_inline_graph_override():
    config = load_run_config(TINY_CONFIG, ["graph={variables: [a, b], edges: [[a, b]]}"])
    assert config.graph == {"variables": ["a", "b"], "edges": [["a", "b"]]}


def test_scientific_notation_float_override():
    config = load_run_config(TINY_CONFIG, ["train.lr=1e-3", "model.beta_start=1e-4"])
    assert config.train.lr == pytest.approx(1e-3)
    assert config.model["beta_start"] == pytest.approx(1e-4)


def test_overrides_do_not_modify_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(TINY_CONFIG.read_text())
    load_run_config(path, ["train.batch_size=2"])
    assert path.read_text() == TINY_CONFIG.read_text()
    assert load_run_config(path).train.batch_size == 8


def test_resolved_config_round_trips(tmp_path):
    config = load_run_config(TINY_CONFIG, ["model.channel_mult=[1, 2, 2]", "train.max_minutes=2.5"])
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert load_run_config(path) == config


# -- errors -------------------------------------------------------------------------------------------


def _error(overrides: list[str], path=TINY_CONFIG) -> str:
    with pytest.raises(ValueError) as err:
        load_run_config(path, overrides)
    return str(err.value)


@pytest.mark.parametrize("assignment, key", [
    ("train.nope=1", "train.nope"),
    ("nope.x=1", "nope"),
    ("data.colour=red", "data.colour"),
    ("model.wings=2", "model.wings"),
])
def test_unknown_key_is_named(assignment, key):
    assert key in _error([assignment])


@pytest.mark.parametrize("assignment, key", [
    ("train.batch_size=abc", "train.batch_size"),
    ("train.max_steps=1.5", "train.max_steps"),
    ("train.cpu=3", "train.cpu"),
    ("train.batch_size=true", "train.batch_size"),
    ("model.channel_mult=[1, two]", "model.channel_mult"),
    ("model.latent_dim=[4]", "model.latent_dim"),
    ("data.name=mnist", "data.name"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
])
def test_wrong_type_is_named(assignment, key):
    assert key in _error([assignment])


@pytest.mark.parametrize("key", ["graph", "image_size", "channels"])
def test_derived_keys_in_model_section_are_rejected(key):
    msg = _error([f"model.{key}=3"])
    assert f"model.{key}" in msg


@pytest.mark.parametrize("assignment, key", [
    ("train.lr=-1", "train.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.ema_decay=1.0", "train.ema_decay"),
    ("train.max_minutes=0", "train.max_minutes"),
    ("model.p_uncond=2", "p_uncond"),
    ("model.latent_dim=0", "latent_dim"),
    ("data.image_size=4", "data.image_size"),
    ("train.freeze=[decoder]", "'decoder' is not one"),
    ("train.freeze=[encoder,causal_layer,unet]", "not all"),
])
def test_invalid_values_are_rejected(assignment, key):
    assert key in _error([assignment])


def test_folder_dataset_needs_a_root():
    assert "data.root" in _error(["data.name=folder", "data.root=null"])


@pytest.mark.parametrize("assignment, message", [
    ("data.label_fraction=0", "data.label_fraction = 0.0 must lie in (0, 1]"),
    ("data.label_fraction=-0.1", "data.label_fraction = -0.1 must lie in (0, 1]"),
    ("data.label_fraction=1.5", "data.label_fraction = 1.5 must lie in (0, 1]"),
    ("data.label_fraction=.nan", "data.label_fraction = nan is not a finite number"),
    ("data.label_fraction=abc", "data.label_fraction = 'abc' has the wrong type"),
    ("data.label_fraction=true", "data.label_fraction = True has the wrong type"),
    ("data.label_fraction={angle: 0}", "data.label_fraction.angle = 0 must lie in (0, 1]"),
    ("data.label_fraction={angle: lots}", "data.label_fraction.angle = 'lots' is not a number"),
    ("data.label_fraction={angle: [0.5]}", "data.label_fraction.angle = [0.5] is not a number"),
])
def test_label_fraction_values_are_checked(assignment, message):
    assert message in _error([assignment])


def test_label_fraction_is_a_share_or_a_mapping_and_round_trips(tmp_path):
    assert load_run_config(TINY_CONFIG).data.label_fraction == 1.0
    assert load_run_config(TINY_CONFIG, ["data.label_fraction=0.25"]).data.label_fraction == 0.25
    config = load_run_config(TINY_CONFIG, ["data.label_fraction={angle: 0.3, light: 1}"])
    assert config.data.label_fraction == {"angle": 0.3, "light": 1.0}
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert load_run_config(path).data.label_fraction == {"angle": 0.3, "light": 1.0}
    assert "data.label_fraction (1.0)" in help_text()


@pytest.mark.parametrize("assignment", ["train.max_steps", "=3", "train.batch_size.x=1", "train=5"])
def test_malformed_override(assignment):
    with pytest.raises(ValueError):
        load_run_config(TINY_CONFIG, [assignment])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_run_config(tmp_path / "nothere.yaml")


def test_invalid_yaml_file_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: [1, 2\n")
    assert "broken.yaml" in _error([], path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert "list.yaml" in _error([], path)


def test_help_text_lists_every_section():
    text = help_text()
    for key in ["graph", "data.root", "data.image_size", "model.latent_dim", "model.p_uncond",
                "train.max_steps", "train.lr", "train.checkpoint_every"]:
        assert key in text, key
    assert "model.image_size" not in text and "model.graph " not in text


@pytest.mark.parametrize("name,changed", [
    ("pendulum-no-dropout", {"p_uncond": 0.0}),
    ("pendulum-diffae-aligned", {"mechanisms": False, "deterministic_encoder": True}),
    ("pendulum-diffae-unaligned", {"mechanisms": False, "label_weight": 0.0, "deterministic_encoder": True}),
    ("pendulum-label-ddim", {"condition_on": "labels", "latent_dim": 1}),
    ("morphomnist-no-dropout", {"p_uncond": 0.0}),
    ("morphomnist-diffae-aligned", {"mechanisms": False, "deterministic_encoder": True}),
    ("morphomnist-diffae-unaligned", {"mechanisms": False, "label_weight": 0.0, "deterministic_encoder": True}),
])
def test_baselines_change_only_what_they_name(name, changed):
    """A baseline config extends the main one: same data, training and every other model key. Both DiffAE
    baselines use DiffAE's deterministic semantic encoder (u = mu, no KL)."""
    base = load_run_config(CONFIGS / f"{name.split('-')[0]}.yaml").to_dict()
    baseline = load_run_config(CONFIGS / "baselines" / f"{name}.yaml").to_dict()
    assert baseline["train"] == base["train"] and baseline["data"] == base["data"]
    assert {k: v for k, v in baseline["model"].items() if base["model"].get(k) != v} == changed


def test_extends_merges_and_rejects_loops(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\ntrain:\n  lr: 0.5\n")
    (tmp_path / "b.yaml").write_text("train:\n  lr: 0.1\n  batch_size: 7\n")
    config = load_run_config(tmp_path / "a.yaml")
    assert (config.train.lr, config.train.batch_size) == (0.5, 7)
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_run_config(tmp_path / "a.yaml")
