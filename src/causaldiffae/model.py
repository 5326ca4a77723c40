"""CausalDiffAE: encoder -> causal layer -> conditional diffusion UNet, and the training objective.

Read this file whole: ModelConfig says what can be configured, CausalDiffAE composes the parts
(docs/method-notes.md, "Model" and "Objective"). It never loops over timesteps; that is the pipeline's job
(counterfactual.py).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import config as cfg
from .atomic import atomic_path, read_together, write_text
from .causal_layer import CausalLayer
from .diffusion import NoiseSchedule
from .encoder import Encoder
from .graph import CausalGraph
from .images import to_signed
from .knobs import Knobs, read_knobs
from .mechanisms import FAMILIES, Family, MechanismFit, deterministic_warning
from .precision import Precision, autocast
from .unet import UNet, UNetConfig

CONFIG_NAME, WEIGHTS_NAME, FORMAT = "model_config.json", "model.safetensors", "causaldiffae"
Value = float | int | torch.Tensor | list


@dataclass
class ModelConfig:
    """Architecture and objective. ``graph``, ``image_size`` and ``channels`` come from the graph and data."""

    graph: dict = field(default_factory=dict)
    image_size: int = 0
    channels: int = 0
    latent_dim: int = cfg.param(16, "d, latent dimensions per variable block")
    encoder_channels: int = cfg.param(32, "width of the encoder's first conv (doubles per stride-2 stage)")
    mechanism_hidden: int = cfg.param(64, "hidden width of each causal mechanism MLP f_i")
    unet_channels: int = cfg.param(32, "UNet base width")
    channel_mult: tuple[int, ...] = cfg.param((1, 2, 2), "UNet width multiplier per resolution level")
    num_res_blocks: int = cfg.param(1, "ResBlocks per UNet level")
    attention_levels: tuple[int, ...] = cfg.param((2,), "UNet levels (0 = full resolution) with self-attention")
    dropout: float = cfg.param(0.0, "dropout inside UNet ResBlocks")
    num_timesteps: int = cfg.param(1000, "T, diffusion steps of the forward process")
    beta_schedule: Literal["linear", "cosine"] = cfg.param("linear", "noise schedule: linear or cosine")
    beta_start: float = cfg.param(1e-4, "first beta of the linear schedule")
    beta_end: float = cfg.param(0.02, "last beta of the linear schedule")
    prediction: Literal["epsilon", "v"] = cfg.param(
        "epsilon", "what the UNet predicts: epsilon (the noise) or v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho "
                   "2022), whose x0 stays well determined at t = T - 1, where epsilon's is divided by sqrt(ab) = 0.006")
    min_snr_gamma: float = cfg.param(
        0.0, "Min-SNR-gamma loss weighting over timesteps (Hang et al., ICCV 2023): each sample's diffusion loss is "
             "weighted min(SNR_t, gamma) / SNR_t for epsilon, / (SNR_t + 1) for v, so that the many easy low-noise "
             "steps stop dominating the gradient; 0 = the plain (uniform) MSE")
    timestep_sampling: Literal["uniform", "logit_normal"] = cfg.param(
        "uniform", "the distribution of training timesteps: uniform over [0, T), or logit-normal, t / T = "
                   "sigmoid(timestep_loc + timestep_scale * N(0, 1)) (Esser et al. 2024), which spends the steps "
                   "on the middle noise levels and, with timestep_loc < 0, on the lower half that a counterfactual "
                   "at depth < 1 decodes through")
    timestep_loc: float = cfg.param(0.0, "location of the logit-normal timestep distribution (< 0: lower noise)")
    timestep_scale: float = cfg.param(1.0, "scale of the logit-normal timestep distribution")
    prior_std: float = cfg.param(1.0, "s, std of the label prior p(z_i | y_i) = N(ynorm_i 1_d, s^2 I)")
    kl_weight: float = cfg.param(1.0, "weight of KL(q(u|x) || N(0, I)) relative to the label term")
    deterministic_encoder: bool = cfg.param(False, "u = mu, no sampling and no KL term (DiffAE's semantic "
                                                   "encoder); the encoder's logvar half is then unused")
    p_uncond: float = cfg.param(0.0, "probability that the UNet sees the null condition (classifier-free)")
    label_weight: float = cfg.param(1.0, "weight of the label prior term; 0 = the unaligned DiffAE baseline (KL only)")
    mechanisms: bool = cfg.param(True, "learn the causal layer's mechanisms; false = the DiffAE baseline: z = u and "
                                       "do() changes only the intervened blocks")
    label_mechanism: Family = cfg.param(
        "spline", "how do() moves a child's label: its invertible mechanism given its parents, fit by likelihood on "
                  "the labels with exact abduction of the noise (spline: monotone spline of the child, then location "
                  "and scale from the parents; affine: location and scale; additive: location only); none: the "
                  "causal layer's MLP with the same u (models saved before mechanisms.py)")
    condition_on: Literal["latents", "labels"] = cfg.param(
        "latents", "latents: CausalDiffAE; labels: the label-conditional DDIM baseline, whose UNet sees the "
                   "normalised labels (no encoder; counterfactuals need the factual labels)")
    num_classes: int = cfg.param(0, "classes of an extra categorical UNet condition (e.g. the MorphoMNIST "
                                    "digit, with data.class_column); 0 = none")

    def __post_init__(self) -> None:
        checks = {
            "latent_dim": self.latent_dim >= 1, "encoder_channels": self.encoder_channels >= 1,
            "unet_channels": self.unet_channels >= 1, "num_res_blocks": self.num_res_blocks >= 1,
            "num_timesteps": self.num_timesteps >= 2, "prior_std": self.prior_std > 0,
            "kl_weight": self.kl_weight >= 0, "label_weight": self.label_weight >= 0,
            "min_snr_gamma": self.min_snr_gamma >= 0,
            "timestep_sampling": self.timestep_sampling in ("uniform", "logit_normal"),
            "timestep_loc": math.isfinite(self.timestep_loc), "timestep_scale": self.timestep_scale > 0,
            "p_uncond": 0 <= self.p_uncond <= 1, "dropout": 0 <= self.dropout < 1, "num_classes": self.num_classes >= 0,
            "beta_start": 0 < self.beta_start < min(1.0, self.beta_end),
            "beta_end": self.beta_start < self.beta_end < 1,
            "prediction": self.prediction in ("epsilon", "v"),
            "label_mechanism": self.label_mechanism in FAMILIES,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"model config: invalid value for {', '.join(bad)}: "
                             + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))


class Latents(NamedTuple):
    """What the encoder abducts from an image: posterior (mu, logvar), exogenous u and causal z, (B, n, d)."""

    mu: torch.Tensor
    logvar: torch.Tensor
    u: torch.Tensor
    z: torch.Tensor


class CausalDiffAE(nn.Module):
    """The causal diffusion autoencoder. Images enter and leave in [0, 1]; labels are in label units."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.graph:
            raise ValueError("ModelConfig.graph is empty: give the causal graph as a dict")
        if config.image_size < 4 or config.channels < 1:
            raise ValueError(f"ModelConfig needs image_size >= 4 and channels >= 1, got "
                             f"{config.image_size} and {config.channels}")
        self.config = config
        self.graph = CausalGraph.from_dict(config.graph)
        n, d = len(self.graph), config.latent_dim
        # the baselines (docs/method-notes.md, "Baselines"): no encoder for the label-conditional DDIM, no
        # mechanisms for it and for DiffAE (their latent SCM has no edges, so do() reaches only the intervened blocks)
        self.encoder = Encoder(config.image_size, config.channels, n, d, config.encoder_channels) \
            if config.condition_on == "latents" else None
        learned = config.mechanisms and config.condition_on == "latents"
        latent_graph = self.graph if learned else CausalGraph.from_dict({**self.graph.to_dict(), "edges": []})
        self.causal_layer = CausalLayer(latent_graph, d, config.mechanism_hidden, config.label_mechanism)
        self.unet = UNet(UNetConfig(
            channels=config.channels, cond_dim=n * d + config.num_classes, base_channels=config.unet_channels,
            channel_mult=config.channel_mult, num_res_blocks=config.num_res_blocks,
            attention_levels=config.attention_levels, dropout=config.dropout))
        # learned null condition (of z and class together) for condition dropout and guidance
        self.null_cond = nn.Parameter(torch.zeros(n * d + config.num_classes))
        self.schedule = NoiseSchedule(config.num_timesteps, config.beta_schedule, config.beta_start, config.beta_end)
        self.knobs = Knobs()  # depth, guidance, steps of counterfactuals that name none; from_pretrained: knobs.json
        self.precision: Precision = "fp32"  # of the UNet at inference ("bf16": autocast; precision.py)

    # -- abduction and action ----------------------------------------------------------------------
    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> Latents:
        """x (B, C, H, W) in [0, 1] -> Latents. ``u = mu`` unless ``sample`` (u = mu + sigma * noise) on a model
        whose encoder is not deterministic (``deterministic_encoder``: DiffAE's semantic encoder never samples).

        The label-conditional baseline reads no image: its latents are the factual ``labels`` (B, n), normalised
        and broadcast over each block; the other models ignore ``labels``. ``x`` may be a numpy array or a tensor of
        another float type (see ``prepare_images``); latents that come out NaN or inf are an error.
        """
        lat = self._abduct(self.prepare_images(x), sample, generator, labels)
        if not torch.isfinite(lat.z).all():
            raise ValueError("the model's latents hold NaN or inf: its encoder's weights may hold NaN or inf")
        return lat

    def _abduct(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
                labels: torch.Tensor | None = None) -> Latents:
        """``encode`` without its input and output checks (training: no device sync per step)."""
        self.check_images(x)
        if self.encoder is None:
            return self.label_latents(labels, x)
        mu, logvar = self.encoder(to_signed(x))  # (B, n, d) each
        if sample and not self.config.deterministic_encoder:
            return self._posterior_draw(mu, logvar, generator)
        return Latents(mu, logvar, mu, self.causal_layer(mu))

    def _posterior_draw(self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None) -> Latents:
        """u ~ N(mu, exp(logvar)) with z through the causal layer; the noise from ``generator`` on its own device."""
        noise = torch.randn(mu.shape, generator=generator,
                            device=generator.device if generator is not None else mu.device).to(mu)
        u = mu + torch.exp(0.5 * logvar) * noise
        return Latents(mu, logvar, u, self.causal_layer(u))

    @property
    def has_posterior(self) -> bool:
        """Whether the encoder's u has a posterior to sample (``sample_latents``): not for DiffAE's deterministic
        encoder, nor for the label-conditional baseline, which has no encoder."""
        return self.encoder is not None and not self.config.deterministic_encoder

    def sample_latents(self, latents: Latents, k: int, generator: torch.Generator | None = None) -> Latents:
        """k draws of u from each image's posterior q(u|x) = N(mu, exp(logvar)), with z through the causal layer:
        (k*B, n, d), sample-major (draw s of image b at s*B + b). The abduction's own uncertainty about u, for
        counterfactual samples (``counterfactual(..., samples=k)``); the noise comes from ``generator`` (on its
        device, then moved). A model without a posterior (``deterministic_encoder``, the label-conditional
        baseline) repeats its latents."""
        if not self.has_posterior:
            return Latents(*(t.repeat(k, 1, 1) for t in latents))
        return self._posterior_draw(latents.mu.repeat(k, 1, 1), latents.logvar.repeat(k, 1, 1), generator)

    def label_latents(self, labels: torch.Tensor | None, like: torch.Tensor, missing_ok: bool = False) -> Latents:
        """Latents of the label-conditional DDIM: z = u = normalised labels broadcast over the block (B, n, d)."""
        if labels is None:
            raise ValueError("this label-conditional model reads no image: pass the factual labels (B, n_vars)")
        ynorm = self.normalize_labels(torch.as_tensor(labels).to(like))
        if ynorm.shape != (like.shape[0], len(self.graph)):
            raise ValueError(f"labels must have shape ({like.shape[0]}, {len(self.graph)}), got {tuple(ynorm.shape)}")
        if not missing_ok and torch.isnan(ynorm).any():
            raise ValueError("the label-conditional model needs every factual label; the labels hold NaN")
        z = torch.nan_to_num(ynorm)[..., None].expand(-1, -1, self.config.latent_dim)
        zeros = torch.zeros_like(z)
        return Latents(z, zeros, z, z)

    def intervene(self, latents: Latents, do: Mapping[str, Value], labels: torch.Tensor | None = None) -> torch.Tensor:
        """do(name = value in label units) -> counterfactual z (B, n, d); descendants are recomputed
        through the mechanisms with the same u, every other block is bit-identical to the factual z. ``labels``
        (B, n), the factual labels where known (NaN elsewhere), replace the model's reading of the factual latents
        in the abduction of each child's noise. A do() on a variable that its parents determine in the training
        labels warns once, naming it and the R^2."""
        for name in do:
            fit = self.causal_layer.labels.deterministic(name) if name in self.graph.variables else None
            if fit is not None:
                warnings.warn(deterministic_warning(fit), UserWarning, stacklevel=2)
        known = None
        if labels is not None:
            known = self.normalize_labels(torch.as_tensor(labels).to(latents.z))
            if known.shape != latents.z.shape[:2]:
                raise ValueError(f"labels must have shape {tuple(latents.z.shape[:2])} (NaN where unknown), got "
                                 f"{tuple(known.shape)}")
        return self.causal_layer(latents.u, do=self._blocks(do, latents.z), factual=latents.z, known=known)

    def generate_latents(self, values: Mapping[str, Value], n: int) -> torch.Tensor:
        """z (n, nv, d) of images that no encoder has seen: the given variables take ``values`` (label units), the
        others follow their mechanisms with zero exogenous noise (u = 0, and the label mechanism's median); every root
        needs a value."""
        roots = [v for v in self.graph.variables if not self.graph.parents(v) and v not in values]
        if roots:
            raise ValueError(f"generating latents needs a value for every root variable; missing {roots}")
        param = next(self.parameters())
        u = torch.zeros(n, len(self.graph), self.config.latent_dim, device=param.device, dtype=param.dtype)
        return self.causal_layer(u, do=self._blocks(values, u), median=True)

    def _blocks(self, do: Mapping[str, Value], like: torch.Tensor) -> dict[str, torch.Tensor]:
        """do values in label units -> normalised latent blocks (B, d), one value broadcast over each block."""
        b = like.shape[0]
        return {name: self.graph[name].normalize(_per_image(value, b, name, like))[:, None].expand(
            b, self.config.latent_dim) for name, value in do.items()}

    def fit_mechanisms(self, labels: torch.Tensor, val: torch.Tensor | None = None, steps: int = 2000, seed: int = 0,
                       progress: bool = False) -> list[MechanismFit]:
        """Fit the label mechanisms by likelihood on raw training labels (N, n; NaN = missing), each on the rows
        where its child and parents are labelled, scored on ``val``; they then carry every do() (mechanisms.py)."""
        param = next(self.parameters())
        norm = self.normalize_labels(labels.to(param))
        return self.causal_layer.labels.fit(norm, None if val is None else self.normalize_labels(val.to(param)),
                                            steps=steps, seed=seed, progress=progress)

    def freeze(self, parts: Sequence[str]) -> None:
        """Hold these parts (any of encoder, causal_layer, unet) at their weights: no gradient is computed for them,
        which is what makes a fine-tune of the rest cheaper. ``unet`` includes the null condition it is fed."""
        for part in parts:
            getattr(self, part).requires_grad_(False)
        if "unet" in parts:
            self.null_cond.requires_grad_(False)

    def with_label_mechanism(self, family: Family) -> CausalDiffAE:
        """The same model (every weight shared, the UNet untouched) with unfitted label mechanisms of ``family``:
        how a model saved before mechanisms.py, or with another family, gets new ones (then ``fit_mechanisms``)."""
        config = ModelConfig(**{**vars(self.config), "label_mechanism": family})
        model = CausalDiffAE(config).to(next(self.parameters()))
        kept = {k: v for k, v in self.state_dict().items() if not k.startswith("causal_layer.labels.")}
        model.load_state_dict({**model.state_dict(), **kept})
        model.knobs, model.precision = self.knobs, self.precision
        return model.eval()

    def read_labels(self, z: torch.Tensor) -> torch.Tensor:
        """The model's own estimate of every variable in label units: each block's mean, de-normalised (B, n)."""
        means = z.mean(dim=-1)
        return self.graph.denormalize(means)

    def normalize_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Raw labels (B, n) in label units -> normalised (about [-1, 1]); NaN (missing) stays NaN."""
        return self.graph.normalize(labels)

    # -- the denoiser --------------------------------------------------------------------------------
    def condition(self, z: torch.Tensor | None, batch: int, classes: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's condition (B, n*d [+ num_classes]): flattened z and the one-hot class when the model
        has one, or the learned null condition for ``z = None``."""
        if z is None:
            return self.null_cond.expand(batch, -1)
        k = self.config.num_classes
        if not k:
            return z.flatten(1)
        if classes is None:
            raise ValueError(f"this model is also conditioned on a class (num_classes={k}): pass the classes")
        classes = torch.as_tensor(classes, device=z.device).long().reshape(-1)
        if classes.numel() != batch or classes.min() < 0 or classes.max() >= k:
            raise ValueError(f"classes must be {batch} integers in [0, {k}), got {classes.tolist()}")
        return torch.cat([z.flatten(1), nn.functional.one_hot(classes, k).to(z)], dim=1)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """eps_theta(x_t, t, cond) with x_t in the model's [-1, 1] scale, whatever the UNet predicts: a v-model's
        output becomes eps = sqrt(ab) v + sqrt(1 - ab) x_t, so every sampler and solver sees the noise. The UNet
        runs at ``self.precision``; the noise comes back in x_t's dtype."""
        with autocast(self.precision, x_t.device):
            out = self.unet(x_t, t, cond).to(x_t.dtype)
        if self.config.prediction == "epsilon":
            return out
        ab = self.schedule.alpha_bar(t, x_t)
        return ab.sqrt() * out + (1 - ab).sqrt() * x_t

    # -- the objective (docs/method-notes.md, "Objective") ------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor], gamma: float = 1.0) -> dict[str, torch.Tensor]:
        """The loss terms: ``forward`` is ``loss`` so that DDP wrappers synchronise its gradients."""
        return self.loss(batch, gamma)

    def loss(self, batch: Mapping[str, torch.Tensor], gamma: float = 1.0) -> dict[str, torch.Tensor]:
        """L = mse + gamma * (kl_weight * KL + label_weight * label) for a batch {"image": [0, 1], "labels": raw}.

        KL and label terms are summed over latent dimensions and averaged over the batch (KL is exactly 0 with
        ``deterministic_encoder``, whose u = mu is never sampled); a missing label
        (NaN) contributes nothing. The prior terms use every image, also those whose condition was dropped,
        so no term is averaged over an empty set (the reference's NaN when a whole batch is dropped).
        Randomness comes from torch's global generator: seed it for a reproducible step.
        """
        x0 = to_signed(batch["image"])
        b, dev = x0.shape[0], x0.device
        if self.encoder is None:  # label-conditional DDIM: a missing label conditions on the mean (0)
            lat = self.label_latents(batch["labels"], x0, missing_ok=True)
            kl = label = torch.zeros((), device=dev)
        else:
            lat = self._abduct(batch["image"], sample=True)  # u = mu for a deterministic encoder
            if self.config.deterministic_encoder:  # DiffAE's semantic encoder: no posterior, so no KL term
                kl = torch.zeros((), device=dev)
            else:
                kl = 0.5 * (lat.mu.pow(2) + lat.logvar.exp() - 1 - lat.logvar).sum(dim=(1, 2)).mean()
            ynorm = self.normalize_labels(batch["labels"].to(lat.z))  # (B, n)
            present = ~torch.isnan(ynorm)
            sq = (lat.z - torch.nan_to_num(ynorm)[..., None]).pow(2).sum(dim=-1)  # (B, n)
            label = (sq * present).sum(dim=1).mean() / (2 * self.config.prior_std**2)

        # always through torch.where, also for p_uncond = 0: the null condition then stays in the graph (with a zero
        # gradient), which multi-process training (DDP) needs from every parameter
        drop = torch.rand(b, device=dev) < self.config.p_uncond
        cond = torch.where(drop[:, None], self.condition(None, b), self.condition(lat.z, b, batch.get("class")))
        t = self.training_timesteps(b, dev)
        noise = torch.randn(x0.shape, device=dev, dtype=x0.dtype)  # not _like: independent of memory layout
        target = noise
        ab = self.schedule.alpha_bar(t, x0)  # (B, 1, 1, 1)
        if self.config.prediction == "v":  # v = sqrt(ab) eps - sqrt(1 - ab) x0
            target = ab.sqrt() * noise - (1 - ab).sqrt() * x0
        per_sample = (self.unet(self.schedule.add_noise(x0, noise, t), t, cond) - target).pow(2).flatten(1).mean(1)
        mse = (per_sample * self.loss_weights(ab.flatten())).mean()
        total = mse + gamma * (self.config.kl_weight * kl + self.config.label_weight * label)
        return {"loss": total, "mse": mse, "kl": kl, "label": label}

    def training_timesteps(self, b: int, device: torch.device) -> torch.Tensor:
        """b timesteps in [0, T) from ``timestep_sampling`` (torch's global generator, like the rest of the loss)."""
        T = self.config.num_timesteps
        if self.config.timestep_sampling == "uniform":
            return torch.randint(0, T, (b,), device=device)
        share = torch.sigmoid(self.config.timestep_loc + self.config.timestep_scale * torch.randn(b, device=device))
        return (share * T).long().clamp_(0, T - 1)

    def loss_weights(self, alpha_bar: torch.Tensor) -> torch.Tensor:
        """Per-sample weights (B,) of the diffusion loss at alpha_bar_t (B,): 1, or Min-SNR-gamma's
        min(SNR, gamma) / SNR for epsilon and min(SNR, gamma) / (SNR + 1) for v (SNR = ab / (1 - ab)), the same
        weight on x0's error in both parameterisations."""
        gamma = self.config.min_snr_gamma
        if not gamma:
            return torch.ones_like(alpha_bar)
        snr = alpha_bar / (1 - alpha_bar)
        return snr.clamp(max=gamma) / (snr + 1 if self.config.prediction == "v" else snr)

    def check_images(self, x: torch.Tensor) -> None:
        expected = (self.config.channels, self.config.image_size, self.config.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"images must have shape (B, {', '.join(map(str, expected))}) with values in "
                             f"[0, 1]; got {tuple(x.shape)}")

    def prepare_images(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1], a tensor or numpy array of any float type -> a tensor of the model's dtype
        on its device. An empty batch, another shape, integer pixels and NaN or inf are refused by name."""
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            kind = f"{x.dtype} values (8-bit images: divide by 255)" if isinstance(x, (torch.Tensor, np.ndarray)) \
                else f"a {type(x).__name__}"
            raise ValueError(f"images must be a float tensor or numpy array (B, C, H, W) in [0, 1], got {kind}")
        self.check_images(x)
        if x.shape[0] == 0:
            raise ValueError(f"the batch of images is empty: shape {tuple(x.shape)}")
        param, given = next(self.parameters()), x.dtype
        x = x.to(device=param.device, dtype=param.dtype)
        bad = ~torch.isfinite(x)
        if bad.any():
            first = int(bad.flatten(1).any(dim=1).nonzero()[0])
            converted = f" (as the model's {param.dtype})" if given != param.dtype else ""
            raise ValueError(f"images hold NaN or inf in {int(bad.sum()):,} of {x.numel():,} pixel values{converted}, "
                             f"the first in image {first}")
        return x

    # -- persistence: safetensors + JSON, nothing pickled -------------------------------------------
    def save_pretrained(self, directory: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write ``model_config.json`` and ``model.safetensors`` (optionally other weights, e.g. EMA). A reader
        (``from_pretrained``) sees the previous model or the new one, never half of either, also in a run folder
        while it trains: the config changes only while the new weights' temporary file exists, and readers wait
        while it does; a failed write (a full disk) leaves the previous model."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in (state_dict or self.state_dict()).items()}
        payload = {"format": FORMAT, "version": 1, "model": cfg.to_dict(self.config)}
        text, config = json.dumps(payload, indent=2) + "\n", directory / CONFIG_NAME
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
            try:
                unchanged = config.read_bytes() == text.encode()
            except OSError:  # none yet (or not a file, which write_text reports)
                unchanged = False
            if not unchanged:
                write_text(config, text)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> CausalDiffAE:
        """Load a folder written by ``save_pretrained`` (a training run's folder included), with its
        ``knobs.json`` when it has one (see ``knobs.py``). Config and weights are read until neither changed
        meanwhile, so a folder being written (a run exporting) gives its previous model, its new one or none."""
        directory = Path(directory)
        weights = directory / WEIGHTS_NAME

        def read() -> tuple[ModelConfig, dict[str, torch.Tensor] | None]:
            config = load_config(directory)
            if not weights.is_file():
                return config, None
            try:
                return config, load_file(str(weights), device=str(device))
            except (SafetensorError, OSError, ValueError) as err:
                raise ValueError(f"corrupt checkpoint {weights}: {err}") from None

        config, state = read_together([directory / CONFIG_NAME, weights], read)
        if state is None:
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
        model = cls(config)
        model.knobs = read_knobs(directory, config.num_timesteps)
        check_finite(state, weights, "the training diverged or the file is damaged; use an earlier checkpoint")
        load_state(model, state, weights)
        model = model.to(device).eval()
        if torch.device(device).type == "cpu":  # oneDNN convolutions: ~20 % faster counterfactuals (benchmarks/)
            # Module.to takes memory_format at run time (documented), but torch's overloads leave it out
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model


def load_config(directory: Path) -> ModelConfig:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a causaldiffae model: {CONFIG_NAME} is missing")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupt model config {path}: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a causaldiffae model config (format {FORMAT!r} expected)")
    model = payload.get("model")
    if isinstance(model, dict) and "label_mechanism" not in model:  # saved before mechanisms.py: the MLP's do()
        model = {**model, "label_mechanism": "none"}
    return cfg.from_dict(ModelConfig, model, "model")


def check_finite(state: Mapping[str, torch.Tensor], weights: Path, remedy: str) -> None:
    """Weights with NaN or inf are refused at load, naming the file and the tensors, not later as NaN outputs."""
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ValueError(f"{weights} holds NaN or inf in {len(broken)} tensor(s) ({', '.join(broken[:3])}"
                         f"{', ...' if len(broken) > 3 else ''}): {remedy}")


def load_state(module: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """load_state_dict that names missing, unexpected or mis-shaped tensors instead of raising RuntimeError."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"checkpoint {source} does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {shapes[:5]}")
    module.load_state_dict(state)


def _per_image(value: Value, batch: int, name: str, like: torch.Tensor) -> torch.Tensor:
    """A scalar or one value per image -> float tensor (B,) on ``like``'s device; rejects NaN and wrong types."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, list, tuple, torch.Tensor,
                                                                      np.ndarray, np.number)):
        raise ValueError(f"do({name}=...) needs a number or one number per image, got {value!r}")
    try:
        t = torch.as_tensor(value, dtype=like.dtype, device=like.device).flatten()
    except (TypeError, ValueError):
        raise ValueError(f"do({name}=...) needs numbers, got {value!r}") from None
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"do({name}=...) has {t.numel()} values for {batch} images")
    if not torch.isfinite(t).all():
        raise ValueError(f"do({name}=...) must be finite, got {value!r}")
    return t


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["CausalDiffAE", "Latents", "ModelConfig", "count_parameters"]
