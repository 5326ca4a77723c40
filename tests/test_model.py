"""CausalDiffAE: abduction, interventions in label units, the training objective, and safe persistence."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from causaldiffae import CausalDiffAE, Latents, ModelConfig
from causaldiffae.data import pendulum
from conftest import TINY, ab_model, poll_while, slowed

NAMES = list(pendulum.VARIABLES)  # angle, light, shadow_length, shadow_position
ANGLE, LIGHT, LENGTH, POSITION = range(4)


def _config(**overrides) -> ModelConfig:
    return ModelConfig(graph=pendulum.GRAPH, image_size=16, channels=3, **{**TINY, **overrides})


def _model(seed: int = 0, **overrides) -> CausalDiffAE:
    torch.manual_seed(seed)
    return CausalDiffAE(_config(**overrides)).eval()


def _randomise(model: torch.nn.Module, seed: int = 1) -> None:
    """Perturb every weight (the UNet's zero-initialised head otherwise makes eps == 0 for any weights)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _images(batch: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _labels(batch: int = 3) -> torch.Tensor:
    rows = pendulum.samples()[:: 997][:batch]
    return torch.tensor([[r[v] for v in NAMES] for r in rows], dtype=torch.float32)


@pytest.fixture(scope="module")
def model() -> CausalDiffAE:
    return _model()


@pytest.fixture(scope="module")
def latents(model) -> Latents:
    with torch.no_grad():
        return model.encode(_images())


# -- abduction ------------------------------------------------------------------------------------------


def test_encode_shapes(model, latents):
    for t in latents:
        assert t.shape == (3, 4, 4)
    assert isinstance(latents, Latents)
    assert torch.equal(latents.u, latents.mu)  # deterministic abduction by default


def test_encode_sample_uses_the_generator(model):
    x = _images()
    with torch.no_grad():
        a = model.encode(x, sample=True, generator=torch.Generator().manual_seed(5))
        b = model.encode(x, sample=True, generator=torch.Generator().manual_seed(5))
        c = model.encode(x, sample=True, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.u, b.u)
    assert not torch.allclose(a.u, c.u)
    assert not torch.allclose(a.u, a.mu)


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (2, 3, 32, 32), (3, 16, 16)])
def test_wrong_image_shape_names_the_expected_shape(model, shape):
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        model.encode(torch.rand(shape))


# -- interventions -------------------------------------------------------------------------------------


def test_intervene_sets_block_to_normalised_value(model, latents):
    z = model.intervene(latents, {"angle": 30})
    expected = (30 - 1.8) / 37.8
    assert z.shape == latents.z.shape
    torch.testing.assert_close(z[:, ANGLE], torch.full((3, 4), expected))


def test_intervene_keeps_non_descendants_and_moves_descendants(model, latents):
    z = model.intervene(latents, {"angle": 30.0})
    assert torch.equal(z[:, LIGHT], latents.z[:, LIGHT])
    for child in (LENGTH, POSITION):
        assert not torch.allclose(z[:, child], latents.z[:, child])


def test_intervene_on_a_leaf_changes_nothing_else(model, latents):
    z = model.intervene(latents, {"shadow_length": 5.0})
    for other in (ANGLE, LIGHT, POSITION):
        assert torch.equal(z[:, other], latents.z[:, other])


def test_intervene_per_image_values(model, latents):
    values = [-20.0, 0.0, 25.5]
    z = model.intervene(latents, {"light": values})
    for i, v in enumerate(values):
        torch.testing.assert_close(z[i, LIGHT], torch.full((4,), (v - 93.6) / 39.6))
    z2 = model.intervene(latents, {"light": torch.tensor(values)})
    assert torch.equal(z, z2)


def test_read_labels_returns_intervened_value(model, latents):
    labels = model.read_labels(model.intervene(latents, {"angle": 30, "light": [60.0, 90.0, 120.0]}))
    assert labels.shape == (3, 4)
    torch.testing.assert_close(labels[:, ANGLE], torch.full((3,), 30.0))
    torch.testing.assert_close(labels[:, LIGHT], torch.tensor([60.0, 90.0, 120.0]))


def test_normalize_labels_keeps_nan(model):
    raw = torch.tensor([[1.8 + 37.8, math.nan, 7.5, 11.0 - 8.0]])
    out = model.normalize_labels(raw)
    torch.testing.assert_close(out[0, [0, 2, 3]], torch.tensor([1.0, 0.0, -1.0]))
    assert torch.isnan(out[0, 1])


@pytest.mark.parametrize(
    "value",
    [math.nan, float("inf"), True, "30", [1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [1.0, math.nan, 2.0], None],
)
def test_intervene_rejects_bad_values(model, latents, value):
    with pytest.raises(ValueError, match="angle"):
        model.intervene(latents, {"angle": value})


def test_intervene_unknown_variable_lists_valid_names(model, latents):
    with pytest.raises(ValueError, match="'height'") as err:
        model.intervene(latents, {"height": 1.0})
    for name in NAMES:
        assert name in str(err.value)


# -- the objective ---------------------------------------------------------------------------------------


def _loss(model: CausalDiffAE, labels: torch.Tensor, seed: int = 0, gamma: float = 1.0) -> dict:
    torch.manual_seed(seed)
    return model.loss({"image": _images(labels.shape[0]), "labels": labels}, gamma=gamma)


def test_loss_terms_finite(model):
    terms = _loss(model, _labels())
    assert set(terms) == {"loss", "mse", "kl", "label"}
    for name, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    assert terms["label"] > 0
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["kl"] + terms["label"])


def test_loss_is_reproducible_under_a_seed(model):
    a, b = _loss(model, _labels(), seed=3), _loss(model, _labels(), seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_forward_is_loss(model):
    torch.manual_seed(0)
    terms = model({"image": _images(), "labels": _labels()})
    ref = _loss(model, _labels())
    assert torch.equal(terms["loss"], ref["loss"])


def test_missing_labels_contribute_nothing(model):
    full = _loss(model, _labels(4))["label"]
    none = _loss(model, torch.full((4, 4), math.nan))
    assert none["label"].item() == 0.0
    assert all(torch.isfinite(v) for v in none.values())
    half_labels = _labels(4)
    half_labels[2:] = math.nan
    half = _loss(model, half_labels)["label"]
    assert 0 < half.item() < full.item()


def test_one_missing_cell_only_drops_that_variable(model):
    labels = _labels(4)
    one = labels.clone()
    one[0, LENGTH] = math.nan
    full, part = _loss(model, labels)["label"], _loss(model, one)["label"]
    assert torch.isfinite(part) and 0 < part < full


def test_missing_labels_give_finite_gradients(model):
    m = _model(seed=4)
    labels = _labels(4)
    labels[1:] = math.nan
    terms = _loss(m, labels)
    terms["loss"].backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_all_conditions_dropped_gives_finite_loss():
    m = _model(p_uncond=1.0)
    terms = _loss(m, _labels())
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["label"] > 0  # the prior terms still use every image


def test_dropped_condition_uses_the_null_condition():
    m = _model(p_uncond=1.0)
    _randomise(m)
    a = _loss(m, _labels(), seed=7)["mse"]
    with torch.no_grad():
        m.null_cond.add_(1.0)
    b = _loss(m, _labels(), seed=7)["mse"]
    assert a != b


def test_gamma_zero_is_pure_mse(model):
    terms = _loss(model, _labels(), gamma=0.0)
    assert terms["loss"].item() == terms["mse"].item()


def test_kl_weight_scales_only_the_kl():
    base, weighted = _model(), _model(kl_weight=3.0)
    a, b = _loss(base, _labels()), _loss(weighted, _labels())
    torch.testing.assert_close(b["loss"], a["mse"] + 3 * a["kl"] + a["label"])


def test_loss_rejects_wrong_image_shape(model):
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        model.loss({"image": torch.rand(2, 1, 16, 16), "labels": _labels(2)})


@pytest.mark.parametrize("key, value", [("latent_dim", 0), ("p_uncond", 1.5), ("beta_end", 1.0),
                                        ("num_timesteps", 1), ("prior_std", 0.0), ("dropout", 1.0)])
def test_model_config_rejects_invalid_values(key, value):
    with pytest.raises(ValueError, match=key):
        _config(**{key: value})


def test_bad_beta_start_is_named():
    with pytest.raises(ValueError, match="beta_start"):
        _config(beta_start=0.5)


def test_model_needs_a_graph():
    with pytest.raises(ValueError, match="graph"):
        CausalDiffAE(ModelConfig(image_size=16, channels=3, **TINY))


# -- persistence ------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = _model(seed=3)
    _randomise(model)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    return model, folder


def test_save_load_round_trip(saved):
    model, folder = saved
    loaded = CausalDiffAE.from_pretrained(folder)
    assert not loaded.training
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    # a CPU model loads in channels_last (faster convolutions): the same weights, sums in another order
    assert loaded.unet.head[-1].weight.is_contiguous(memory_format=torch.channels_last)
    close = dict(rtol=1e-4, atol=1e-5)
    x = _images()
    x_t, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 50, 99])
    with torch.no_grad():
        a, b = model.encode(x), loaded.encode(x)
        for left, right in zip(a, b, strict=True):
            torch.testing.assert_close(left, right, **close)
        cond = model.condition(a.z, 3)
        eps = model.eps(x_t, t, cond)
        assert eps.abs().sum() > 0  # not the zero-initialised head
        torch.testing.assert_close(eps, loaded.eps(x_t, t, cond), **close)
        assert torch.equal(model.condition(None, 3), loaded.condition(None, 3))
        torch.testing.assert_close(model.intervene(a, {"angle": 10}), loaded.intervene(b, {"angle": 10}), **close)


def test_saved_folder_holds_no_pickle(saved):
    _, folder = saved
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["model.safetensors", "model_config.json"]
    payload = json.loads((folder / "model_config.json").read_text())
    assert payload["format"] == "causaldiffae"
    assert payload["model"]["graph"] == pendulum.GRAPH


def test_save_into_existing_folder_overwrites(saved):
    _, folder = saved
    other = _model(seed=9)
    _randomise(other, seed=9)
    other.save_pretrained(folder)
    loaded = CausalDiffAE.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), other.state_dict().values(),
                                                  strict=True))


def test_a_folder_saved_over_by_another_model_loads_as_one_of_them(tmp_path, monkeypatch):
    """Saving a model of another config (another latent width) over a folder while another thread loads it: each
    load gives the old model or the new one, whole (never new weights with the old config, or the reverse). The
    writes start late, so that loads land in the middle of them."""
    from causaldiffae import model as model_module

    narrow, wide = ab_model(latent_dim=2), ab_model(latent_dim=3)
    folder = tmp_path / "model"
    narrow.save_pretrained(folder)
    monkeypatch.setattr(model_module, "save_file", slowed(model_module.save_file, 0.1))
    monkeypatch.setattr(model_module, "write_text", slowed(model_module.write_text, 0.1))

    def save_in_turn() -> None:
        for model in (wide, narrow, wide):
            time.sleep(0.1)  # a pause between saves, as between a run's exports: loads wait for a save to end
            model.save_pretrained(folder)

    results = poll_while(lambda: CausalDiffAE.from_pretrained(folder).config.latent_dim, save_in_turn)
    assert [r for r in results if isinstance(r, Exception)] == []
    assert set(results) == {2, 3}
    assert CausalDiffAE.from_pretrained(folder).config.latent_dim == 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_raise_value_error(saved, damage):
    _, folder = saved
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x89this is not a safetensors file" * 50)
    else:
        weights.write_bytes(b"")
    with pytest.raises(ValueError, match="corrupt"):
        CausalDiffAE.from_pretrained(folder)


def test_missing_weights_file(saved):
    _, folder = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        CausalDiffAE.from_pretrained(folder)


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        CausalDiffAE.from_pretrained(tmp_path)


@pytest.mark.parametrize("payload", [
    {"model": {}},  # format missing
    {"format": "diffusers", "model": {}},
    ["not", "a", "mapping"],
])
def test_foreign_config_is_rejected(saved, payload):
    _, folder = saved
    (folder / "model_config.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="causaldiffae"):
        CausalDiffAE.from_pretrained(folder)


def test_corrupt_config_json(saved):
    _, folder = saved
    (folder / "model_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        CausalDiffAE.from_pretrained(folder)


def test_config_with_unknown_key_is_rejected(saved):
    _, folder = saved
    path = folder / "model_config.json"
    payload = json.loads(path.read_text())
    payload["model"]["wings"] = 2
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="wings"):
        CausalDiffAE.from_pretrained(folder)


def test_config_saved_before_a_new_key_loads_with_its_default(saved):
    """A model saved before deterministic_encoder existed loads as the stochastic encoder it was trained with."""
    model, folder = saved
    path = folder / "model_config.json"
    payload = json.loads(path.read_text())
    del payload["model"]["deterministic_encoder"]
    path.write_text(json.dumps(payload))
    loaded = CausalDiffAE.from_pretrained(folder)
    assert loaded.config.deterministic_encoder is False and loaded.config == model.config


def test_state_dict_with_missing_key(saved):
    model, folder = saved
    state = dict(model.state_dict())
    del state["null_cond"]
    model.save_pretrained(folder, state_dict=state)
    with pytest.raises(ValueError, match="null_cond"):
        CausalDiffAE.from_pretrained(folder)


def test_state_dict_of_another_architecture(saved, tmp_path):
    _, folder = saved
    bigger = _model(latent_dim=5)
    other = tmp_path / "other"
    bigger.save_pretrained(other)
    # keep the small model's config, use the bigger model's weights
    (other / "model_config.json").write_bytes((folder / "model_config.json").read_bytes())
    with pytest.raises(ValueError, match="wrong shape"):
        CausalDiffAE.from_pretrained(other)


def test_generated_latents_follow_the_mechanisms_with_zero_noise():
    """z_a = normalised a broadcast over the block; z_b = f_b(z_a) + u_b with u_b = 0; a given b overrides f_b."""
    model = ab_model()
    a = model.graph["a"]
    with torch.no_grad():
        z = model.generate_latents({"a": [a.denormalize(0.5), a.denormalize(-1.0)]}, 2)
        assert torch.allclose(z[:, 0], torch.tensor([[0.5, 0.5], [-1.0, -1.0]]))
        torch.testing.assert_close(z[:, 1], model.causal_layer.mechanisms["b"](z[:, 0]))
        both = model.generate_latents({"a": a.denormalize(0.5), "b": model.graph["b"].denormalize(0.25)}, 1)
        assert torch.allclose(both[0], torch.tensor([[0.5, 0.5], [0.25, 0.25]]))
    with pytest.raises(ValueError, match=r"root variable; missing \['a'\]"):
        model.generate_latents({"b": 1.0}, 1)
