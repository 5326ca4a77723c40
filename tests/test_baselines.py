"""The baselines under the same model class: DiffAE (no mechanisms, aligned or not) and the label-conditional DDIM."""

from __future__ import annotations

import pytest
import torch

from causaldiffae import CausalDiffAE, ModelConfig
from causaldiffae.counterfactual import counterfactual
from causaldiffae.data import pendulum
from conftest import TINY

ANGLE, LIGHT, LENGTH, POSITION = range(4)


def _model(**overrides) -> CausalDiffAE:
    torch.manual_seed(0)
    return CausalDiffAE(ModelConfig(graph=pendulum.GRAPH, image_size=16, channels=3, **{**TINY, **overrides})).eval()


def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    rows = pendulum.samples()[:n]
    labels = torch.tensor([[r[v] for v in pendulum.VARIABLES] for r in rows], dtype=torch.float32)
    return {"image": torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1)), "labels": labels}


def test_diffae_intervention_reaches_only_the_intervened_block():
    model = _model(mechanisms=False)
    assert len(model.causal_layer.mechanisms) == 0
    lat = model.encode(_batch()["image"])
    assert torch.equal(lat.z, lat.u)  # no causal layer: z = u
    z_cf = model.intervene(lat, {"angle": 10.0})
    assert not torch.equal(z_cf[:, ANGLE], lat.z[:, ANGLE])
    for block in (LIGHT, LENGTH, POSITION):  # the descendants of angle stay: the model knows no mechanism
        assert torch.equal(z_cf[:, block], lat.z[:, block])


def test_causaldiffae_intervention_moves_descendants():
    model = _model()
    lat = model.encode(_batch()["image"])
    z_cf = model.intervene(lat, {"angle": 10.0})
    assert not torch.equal(z_cf[:, LENGTH], lat.z[:, LENGTH])


def test_unaligned_diffae_has_no_label_term_in_its_loss():
    batch = _batch()
    torch.manual_seed(3)
    aligned = _model(mechanisms=False).loss(batch)
    torch.manual_seed(3)
    unaligned = _model(mechanisms=False, label_weight=0.0).loss(batch)
    assert aligned["label"] > 0 and torch.isclose(aligned["label"], unaligned["label"])
    assert torch.isclose(unaligned["loss"], unaligned["mse"] + unaligned["kl"] * 1.0)
    assert torch.isclose(aligned["loss"], aligned["mse"] + aligned["kl"] + aligned["label"])


@pytest.mark.parametrize("overrides", [dict(), dict(label_weight=0.0)])
def test_deterministic_encoder_never_samples_and_has_no_kl(overrides):
    """DiffAE's semantic encoder: u = mu in the loss too, so the KL term is exactly 0 and the latents (here read
    through the label term, a function of z alone) do not depend on the RNG; the stochastic encoder's do."""
    batch = _batch()
    model = _model(mechanisms=False, deterministic_encoder=True, **overrides)
    terms = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        terms.append(model.loss(batch))
    assert all(t["kl"].item() == 0.0 for t in terms)
    assert torch.equal(terms[0]["label"], terms[1]["label"])
    assert not torch.equal(terms[0]["mse"], terms[1]["mse"])  # the diffusion noise and t still change
    expected = terms[0]["mse"] + model.config.label_weight * terms[0]["label"]
    assert torch.allclose(terms[0]["loss"], expected)
    assert torch.equal(model.encode(batch["image"], sample=True).u, model.encode(batch["image"]).mu)
    stochastic = _model(mechanisms=False, **overrides)
    stochastic_labels = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        stochastic_labels.append(stochastic.loss(batch)["label"])
    assert not torch.equal(*stochastic_labels)


def test_deterministic_encoder_trains_the_encoder():
    """Without label term and KL the encoder learns only through the UNet's condition z = mu."""
    model = _model(mechanisms=False, deterministic_encoder=True, label_weight=0.0).train()
    with torch.no_grad():  # the UNet's zero-initialised output convolutions would pass no gradient back
        for p in model.unet.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    model.loss(_batch())["loss"].backward()
    assert model.encoder.head.weight.grad.abs().sum() > 0


def test_label_ddim_has_no_encoder_and_conditions_on_the_labels():
    model = _model(condition_on="labels", latent_dim=1)
    assert model.encoder is None and not any(k.startswith("encoder.") for k in model.state_dict())
    batch = _batch()
    lat = model.encode(batch["image"], labels=batch["labels"])
    assert torch.allclose(model.read_labels(lat.z), batch["labels"], atol=1e-4)
    z_cf = model.intervene(lat, {"angle": 10.0})
    assert torch.allclose(model.read_labels(z_cf)[:, ANGLE], torch.full((4,), 10.0), atol=1e-4)
    assert torch.equal(z_cf[:, LENGTH], lat.z[:, LENGTH])  # no mechanisms: the shadow keeps its factual label
    terms = model.loss(batch)
    assert terms["kl"] == 0 and terms["label"] == 0 and torch.isfinite(terms["mse"])


def test_label_ddim_needs_complete_labels_for_a_counterfactual():
    model = _model(condition_on="labels", latent_dim=1)
    batch = _batch(2)
    with pytest.raises(ValueError, match="pass the factual labels"):
        counterfactual(model, batch["image"], {"angle": 0.0}, steps=2)
    labels = batch["labels"].clone()
    labels[0, LIGHT] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        counterfactual(model, batch["image"], {"angle": 0.0}, steps=2,
                       latents=model.encode(batch["image"], labels=labels))
    out = counterfactual(model, batch["image"], {"angle": 0.0}, steps=2,
                         latents=model.encode(batch["image"], labels=batch["labels"]))
    assert out.images.shape == batch["image"].shape
    torch.testing.assert_close(out.labels_cf["angle"], torch.zeros(2), atol=1e-4, rtol=0)


def test_label_ddim_trains_with_missing_labels():
    model = _model(condition_on="labels", latent_dim=1).train()
    batch = _batch()
    batch["labels"][1, ANGLE] = float("nan")
    terms = model.loss(batch)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])


@pytest.mark.parametrize("overrides", [dict(mechanisms=False), dict(condition_on="labels", latent_dim=1)])
def test_baselines_round_trip(tmp_path, overrides):
    model = _model(**overrides)
    model.save_pretrained(tmp_path)
    loaded = CausalDiffAE.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
