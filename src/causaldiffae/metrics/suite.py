"""The evaluation suite: every metric of docs/method-notes.md "Evaluation" for one model on a dataset's test
split, over seeds.

Per seed: ``n`` test images (a seeded draw), each with one single-variable intervention (variables in turn,
values drawn from the test split's marginal of that variable) and, per batch, one random multi-variable
intervention; one DDIM abduction serves both. Composition (1 and 10 null-intervention cycles), reversibility
(re-abducting the counterfactual) and the guidance sweep run on the first
``subset`` images, which keeps 1,000 interventions within half an hour on two CPU cores. Pixel errors are on
the 0-255 scale.

Every attribute score stands between two floors read by the same predictors: the no-op floor (the factual image
returned as the counterfactual) and, where the SCM is known, the oracle (the true counterfactual), so that the
share of instrument error in a number is visible; ``gap_closed`` puts the model between them. On MorphoMNIST the
morphometry of the counterfactuals stands beside the same two floors. With a class classifier among the
predictors, ``class_kept`` is the share of counterfactuals (and of true counterfactuals) that the classifier
reads as the factual image's class: the digit kept. Realism compares with the train split, which shares no image
with the counterfactuals' inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .. import memory
from ..counterfactual import Sweep, sweep
from ..data.base import ImageDataset
from ..knobs import Abduction
from ..model import CausalDiffAE
from . import dci, minimality, realism
from .effectiveness import attribute_errors, movement, non_descendant_change, normalized
from .predictors import Predictors
from .settings import Settings
from .truth import TrueSCM, known_labels, morphometry_labels, true_scm

MULTI = "multi"


@dataclass
class _Rows:
    """Per-row results of one seed's main pass, concatenated over batches."""

    chunks: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add(self, **tensors: torch.Tensor) -> None:
        for key, value in tensors.items():
            self.chunks.setdefault(key, []).append(value.detach().float().cpu())

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.cat(self.chunks[key])


def evaluate(model: CausalDiffAE, dataset: ImageDataset, predictors: Predictors, settings: Settings | None = None,
             progress: bool = True,
             on_examples: Callable[[str, list[torch.Tensor], list[str], list[str]], None] | None = None,
             ) -> dict:
    """Run the suite; returns {"settings", "predictors", "true_scm", "seeds": [per-seed metrics]}.

    ``on_examples(name, rows, row_labels, column_labels)`` receives example grids (factual, reconstruction,
    counterfactual and, where the SCM is known, the truth) of the first seed.
    """
    settings = (settings or Settings()).resolved(model.knobs)
    dataset = dataset.with_variables(model.graph.variables)  # matched by name; names a missing variable
    if list(predictors.variables) != model.graph.variables:
        raise ValueError(f"the predictors read {list(predictors.variables)}, the model has {model.graph.variables}")
    kept = 2 * settings.n * dataset.channels * dataset.image_size**2 * 4  # at least x and cf of every row, float32
    memory.check(kept, f"evaluating n={settings.n:,} interventions", "ask for fewer (--n)")
    context = _Context(model, dataset, predictors, settings)
    reversed_rows = len(model.graph) * math.ceil(settings.subset / len(model.graph))
    work = len(settings.seeds) * (settings.n + min(settings.n, reversed_rows) + settings.subset * (settings.cycles + 1))
    bar = tqdm(total=work, unit="img", desc="evaluate", disable=not progress, dynamic_ncols=True)
    seeds = []
    previous, model.precision = model.precision, settings.precision  # the UNet's, for this run only
    try:
        for i, seed in enumerate(settings.seeds):
            seeds.append(context.run_seed(seed, bar, on_examples if i == 0 else None))
    finally:
        model.precision = previous
    bar.close()
    return {"settings": asdict(settings), "variables": model.graph.variables, "predictors": predictors.held_out,
            "predictors_interventional": predictors.held_out_interventional,
            "true_scm": context.scm.kind if context.scm else None, "seeds": seeds}


class _Context:
    """What every seed shares: the model, the test split, its predictor readings and features."""

    def __init__(self, model: CausalDiffAE, dataset: ImageDataset, predictors: Predictors, settings: Settings) -> None:
        self.model, self.full, self.predictors, self.s = model, dataset, predictors, settings
        self.test = dataset.split("test")
        self.scm: TrueSCM | None = true_scm(self.test)
        self.graph = model.graph
        self.device = next(model.parameters()).device
        self.real_features = _chunked(predictors.features, self.test)
        # realism's reference shares no image with the counterfactuals' inputs (the test split): the train split
        self.reference_split = "train" if dataset.splits.count("train") >= 2 else "test"  # tiny data: no train
        reference = dataset.split(self.reference_split)
        self.reference_features = _chunked(predictors.features, reference)
        self.reference_pixels = _channel_means(reference.images.float() / 255)
        self._morphometry: dict[int, torch.Tensor] = {}  # test row -> measured (thickness, intensity)

    # -- one seed ----------------------------------------------------------------------------------------
    def run_seed(self, seed: int, bar: tqdm, on_examples: Callable | None) -> dict:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.test), generator=g)
        picks = order.repeat(math.ceil(self.s.n / len(order)))[: self.s.n]
        names = self.graph.variables
        rows = {name: picks[i:: len(names)] for i, name in enumerate(names)}
        results: dict = {"effectiveness": {}, "noop_floor": {}, "executed": {}, "minimality": {},
                         "dag_consistency": {}}
        if self.scm is not None:
            results.update(truth={}, oracle={}, gap_closed={})
        if self.predictors.classifier is not None:
            results["class_kept"] = {}
        passes = []
        for name, index in rows.items():
            data = self._main_pass(name, index, g, bar, math.ceil(self.s.subset / len(names)))
            passes.append(data)
            self._score(results, name, data, index)
            if on_examples is not None:
                self._examples(name, index[: self.s.examples], g, on_examples)
        self._score_multi(results, passes)
        shares = [v for v in results["executed"].values() if v is not None]
        results["executed_share"] = sum(shares) / len(shares) if shares else None  # over the single interventions
        for metric in ("reversibility", "idempotence"):  # NaN with subset 0
            results[f"{metric}_l1"] = torch.cat([d.get(metric, torch.zeros(0)) for d in passes]).mean().item()
        results["realism"] = self._realism(passes, seed)
        sub = picks[: self.s.subset]
        if len(sub):
            results["composition"] = self._composition(sub, bar)
            results["guidance_sweep"] = self._guidance_sweep(sub, g)
        if self.model.encoder is not None:  # z: the causal latents (aligned to the labels by the loss), u: the noise
            results["dci"], results["dci_u"] = self._dci(seed, "z"), self._dci(seed, "u")
        return results

    def _realism(self, passes: list[dict], seed: int) -> dict:
        """FID/KID of the counterfactuals and, as the floor, of their factual inputs (same count), both against
        the reference split, which shares no image with the inputs; the largest per-channel mean difference to
        the reference (0-255) catches colour casts that the predictors' features may not see."""
        reference = self.reference_features.numpy()
        out: dict = {"reference": f"{self.reference_split} split", "reference_images": len(reference),
                     "reference_channel_means": self.reference_pixels.tolist()}
        for suffix, features, images in (("", "features_cf", "cf"), ("_factual", "features_x0", "x")):
            feats = torch.cat([d[features] for d in passes]).numpy()
            kid, kid_std = realism.kernel_inception_distance(feats, reference, seed=seed)
            means = _channel_means(torch.cat([d[images] for d in passes]))
            out.update({f"fid{suffix}": realism.frechet_distance(feats, reference), f"kid{suffix}": kid,
                        f"kid_std{suffix}": kid_std, f"images{suffix}": len(feats),
                        f"channel_means{suffix}": means.tolist(),
                        f"colour_cast{suffix}": (means - self.reference_pixels).abs().max().item()})
        return out

    def _labels(self, index: torch.Tensor) -> torch.Tensor:
        return self.test.labels[index].float()

    def _marginal(self, name: str, count: int, g: torch.Generator) -> torch.Tensor:
        """Values of ``name`` drawn from the test split's labels (its empirical marginal)."""
        column = self.test.labels[:, self.graph.index(name)].float()
        column = column[~torch.isnan(column)]
        if not len(column):
            raise ValueError(f"the test split has no label of {name!r}: interventions cannot be drawn")
        return column[torch.randint(len(column), (count,), generator=g)]

    def _intended(self, index: torch.Tensor, do: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Intended labels (B, n) of a do() on the rows ``index``, and the true images when the SCM is known."""
        if self.scm is None:
            return known_labels(self.graph, self._labels(index), do), None
        images, labels = self.scm.counterfactual(index.tolist(), do)
        return labels, images

    def _main_pass(self, name: str, index: torch.Tensor, g: torch.Generator, bar: tqdm, reverse: int) -> dict:
        """Single and multi-variable interventions of the rows ``index``; reversibility for the first ``reverse``."""
        data = _Rows()
        for start in range(0, len(index), self.s.batch_size):
            rows = index[start: start + self.s.batch_size]
            batch = self.test.batch(rows)
            x, labels = batch["image"], batch["labels"].float()
            single = {name: self._marginal(name, len(rows), g)}
            k = int(torch.randint(2, len(self.graph) + 1, (1,), generator=g)) if len(self.graph) > 1 else 1
            chosen = [self.graph.variables[j] for j in sorted(torch.randperm(len(self.graph), generator=g)[:k])]
            multi = {v: self._marginal(v, len(rows), g) for v in chosen}
            columns = [(single, self.s.guidance), (multi, self.s.guidance)]
            result = self._sweep(x, columns, batch.get("class"), labels, g)
            cf, cf_multi = (im.float().cpu() for im in result.images)
            m = max(0, min(len(rows), reverse - start))
            if m:
                classes = batch["class"][:m] if "class" in batch else None
                # the label baseline's factual labels of a counterfactual: its own reading of z_cf
                cf_labels = self.model.read_labels(result.z_cf[0][:m])
                back = self._sweep(cf[:m], [({name: labels[:m, self.graph.index(name)]}, self.s.guidance)], classes,
                                   cf_labels, g).images[0].float().cpu()
                # idempotence: the same do() again on the counterfactual should change nothing
                again = self._sweep(cf[:m], [({name: single[name][:m]}, self.s.guidance)], classes, cf_labels,
                                    g).images[0].float().cpu()
                data.add(reversibility=pixel_l1(back, x[:m]), idempotence=pixel_l1(again, cf[:m]))
            intended, truth = self._intended(rows, single)
            intended_multi, truth_multi = self._intended(rows, multi)
            data.add(x=x, cf=cf, intended=intended, intended_multi=intended_multi,
                     predicted_x0=self.predictors.predict(x).float(), predicted_cf=self.predictors.predict(cf),
                     predicted_multi=self.predictors.predict(cf_multi), features_cf=self.predictors.features(cf),
                     features_x0=self.predictors.features(x), value=single[name])
            if truth is not None:
                if truth_multi is None:  # both come from the SCM, or neither
                    raise RuntimeError("the SCM gave true images of the single but not the multi-variable do()")
                data.add(truth=truth, truth_multi=truth_multi, cf_multi=cf_multi,
                         predicted_truth=self.predictors.predict(truth),
                         predicted_truth_multi=self.predictors.predict(truth_multi),
                         features_truth=self.predictors.features(truth))
            if self.predictors.classifier is not None:  # the class (digit) the classifier reads, kept or not
                factual = self.predictors.predict_class(x)
                kept = {"class_kept": cf, "class_kept_multi": cf_multi}
                if truth is not None:
                    kept.update(class_kept_truth=truth, class_kept_truth_multi=truth_multi)
                data.add(**{k: self.predictors.predict_class(images) == factual for k, images in kept.items()})
            bar.update(len(rows) + m)
        return {key: data[key] for key in data.chunks}

    def _score(self, results: dict, name: str, data: dict, index: torch.Tensor) -> None:
        key = f"do({name})"
        graph = self.graph
        results["effectiveness"][key] = attribute_errors(graph, data["predicted_cf"], data["intended"])
        results["noop_floor"][key] = attribute_errors(graph, data["predicted_x0"], data["intended"])
        moved = movement(graph, data["predicted_x0"], data["predicted_cf"])
        truth_moved = movement(graph, self._labels(index), data["intended"])
        asked = movement(graph, data["predicted_x0"], data["intended"])[name]
        results["executed"][key] = moved[name] / asked if asked > 0 else None  # share of the asked change made
        results["dag_consistency"][key] = {
            v: {"moved": moved[v], "true_change": truth_moved[v],
                "allowed": v in graph.affected([name])} for v in graph.variables}
        column = graph.index(name)
        reference_values = self.test.labels[:, column].float().numpy()

        def cld(features: torch.Tensor) -> dict:
            return minimality.counterfactual_latent_divergence(
                data["features_x0"].numpy(), features.numpy(), self.real_features.numpy(), reference_values,
                self._labels(index)[:, column].numpy(), data["value"].numpy(),
                minimality.quantile_bins(reference_values))

        model_cld = cld(data["features_cf"])
        if "class_kept" in results:
            results["class_kept"][key] = _class_kept(data, "")
        results["minimality"][key] = {"non_descendant_change": non_descendant_change(graph, [name], moved),
                                      "cld": model_cld["cld"], "cld_p1": model_cld["p1"], "cld_p2": model_cld["p2"]}
        if "truth" in data:  # the oracle: the true counterfactuals scored by the same instrument
            oracle_moved = movement(graph, data["predicted_x0"], data["predicted_truth"])
            for v in graph.variables:
                results["dag_consistency"][key][v]["oracle_moved"] = oracle_moved[v]
            results["minimality"][key].update(
                oracle_non_descendant_change=non_descendant_change(graph, [name], oracle_moved),
                oracle_cld=cld(data["features_truth"])["cld"])
            self._oracle(results, key, [name], data["predicted_truth"], data["intended"])
            results["truth"][key] = _truth_errors(data["cf"], data["x"], data["truth"])
            if self.scm is not None and self.scm.kind == "morphomnist":  # measured, beside both floors
                truth = results["truth"][key]
                for suffix, measured in (("", morphometry_labels(data["cf"])),
                                         ("_noop", self._factual_morphometry(index)),
                                         ("_oracle", morphometry_labels(data["truth"]))):
                    truth[f"morphometry{suffix}"] = attribute_errors(graph, measured, data["intended"])

    def _factual_morphometry(self, index: torch.Tensor) -> torch.Tensor:
        """Thickness and intensity measured on the test images ``index`` (B, 2), each image measured once."""
        new = sorted({int(i) for i in index} - set(self._morphometry))
        if new:
            self._morphometry.update(zip(new, morphometry_labels(self.test.batch(new)["image"]), strict=True))
        return torch.stack([self._morphometry[int(i)] for i in index])

    def _score_multi(self, results: dict, passes: list[dict]) -> None:
        """The multi-variable interventions of every batch, scored together."""
        def joined(key: str) -> torch.Tensor:
            return torch.cat([d[key] for d in passes])

        intended = joined("intended_multi")
        results["effectiveness"][MULTI] = attribute_errors(self.graph, joined("predicted_multi"), intended)
        results["noop_floor"][MULTI] = attribute_errors(self.graph, joined("predicted_x0"), intended)
        if "class_kept" in results:
            keys = ["class_kept_multi"] + (["class_kept_truth_multi"] if "class_kept_truth_multi" in passes[0] else [])
            results["class_kept"][MULTI] = _class_kept({k: joined(k) for k in keys}, "_multi")
        if "truth" in results:
            results["truth"][MULTI] = _truth_errors(joined("cf_multi"), joined("x"), joined("truth_multi"))
            self._oracle(results, MULTI, None, joined("predicted_truth_multi"), intended)

    def _oracle(self, results: dict, key: str, intervened: list[str] | None, predicted_truth: torch.Tensor,
                intended: torch.Tensor) -> None:
        """The oracle row of ``key`` and the gap closed, ``(noop - model) / (noop - oracle)`` per variable the
        intervention changes (1 = as good as the truth, 0 = no better than returning the input; None where the
        floors coincide). ``intervened=None``: every variable counts (the multi-variable interventions)."""
        oracle = results["oracle"][key] = attribute_errors(self.graph, predicted_truth, intended)
        model, noop = results["effectiveness"][key], results["noop_floor"][key]
        affected = self.graph.affected(intervened) if intervened is not None else set(self.graph.variables)
        results["gap_closed"][key] = {v: gap_closed(noop[v]["mae_normalized"], model[v]["mae_normalized"],
                                                    oracle[v]["mae_normalized"])
                                      for v in self.graph.variables if v in affected and v in oracle}

    def _composition(self, index: torch.Tensor, bar: tqdm) -> dict:
        """The decoder's own cycle: L1 to x0 after each of ``cycles`` null interventions (each re-abducts its
        input), by plain DDIM inversion where the evaluation's abduction is the exact one (which returns any
        image by construction, whatever the decoder: 0 for a model that ignores its latents)."""
        abduction: Abduction = "ddim" if self.s.abduction == "exact" else self.s.abduction
        curve = []
        for start in range(0, len(index), self.s.batch_size):
            rows = index[start: start + self.s.batch_size]
            batch = self.test.batch(rows)
            x = current = batch["image"]
            errors = []
            for _ in range(self.s.cycles):
                current = self._sweep(current, [({}, self.s.guidance)], batch.get("class"), batch["labels"],
                                      abduction=abduction).images[0].float().cpu()
                errors.append(pixel_l1(current, x))
                bar.update(len(rows))
            curve.append(torch.stack(errors, dim=1))
            bar.update(len(rows))
        mean = torch.cat(curve).mean(dim=0)
        return {"l1_1": mean[0].item(), f"l1_{self.s.cycles}": mean[-1].item(), "curve": mean.tolist(),
                "abduction": abduction}

    def _guidance_sweep(self, index: torch.Tensor, g: torch.Generator) -> dict:
        """Effectiveness on the intervened variable (normalised MAE) and null-intervention L1 for each weight w (with
        the exact abduction 0 by construction at w = 1 only: its residuals are those of the w = 1 decoding)."""
        weights = self.s.weights
        errors: dict[float, list[torch.Tensor]] = {w: [] for w in weights}
        l1: dict[float, list[torch.Tensor]] = {w: [] for w in weights}
        names = self.graph.variables
        for i, name in enumerate(names):
            rows = index[i:: len(names)]
            if not len(rows):
                continue
            batch = self.test.batch(rows)
            x, labels = batch["image"], batch["labels"].float()
            do = {name: self._marginal(name, len(rows), g)}
            columns = [(do, w) for w in weights] + [({}, w) for w in weights]
            result = self._sweep(x, columns, batch.get("class"), labels, g)
            intended, _ = self._intended(rows, do)
            column = self.graph.index(name)
            for j, w in enumerate(weights):
                predicted = self.predictors.predict(result.images[j].float())
                diff = normalized(self.graph, predicted.float().cpu()) - normalized(self.graph, intended)
                errors[w].append(diff[:, column].abs())
                l1[w].append(pixel_l1(result.images[len(weights) + j].float().cpu(), x))
        return {f"w={w:g}": {"effectiveness": torch.cat(errors[w]).mean().item(),
                             "null_l1": torch.cat(l1[w]).mean().item()} for w in weights}

    def _sweep(self, x: torch.Tensor, columns: list, classes: torch.Tensor | None, labels: torch.Tensor,
               g: torch.Generator | None = None, reconstruct: bool = False,
               abduction: Abduction | None = None) -> Sweep:
        """``sweep`` at the evaluation's settings; the factual latents from the images (the label-conditional
        baseline's from their factual ``labels``, which with ``known_labels`` also serve the mechanisms' abduction)."""
        return sweep(self.model, x, columns, steps=self.s.steps, depth=self.s.depth,
                     abduction=abduction or self.s.abduction,
                     solver=self.s.solver, classes=classes, generator=g, latents=self.model.encode(x, labels=labels),
                     labels=labels if self.s.known_labels else None, reconstruct=reconstruct)

    def _dci(self, seed: int, which: str) -> dict:
        """DCI of the model's latents ``which`` against the labels, GBT per factor; per dimension and per block. On
        z it is about 1 by construction (the label term makes each block a copy of its label); on u it says how
        much of each label the encoder's noise itself carries."""
        train = self.full.split("train") if self.full.splits.count("train") >= 10 else self.test  # tiny data
        codes_train, labels_train = self._codes(train, seed, which)
        codes_test, labels_test = self._codes(self.test, seed + 1, which)
        return dci.dci(codes_train, labels_train, codes_test, labels_test, block_size=self.model.config.latent_dim,
                       seed=seed)

    def _codes(self, data: ImageDataset, seed: int, which: str) -> tuple:
        """Latents ``which`` (z, the causal latents, or u, the exogenous noise) of up to dci_samples images."""
        g = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(data), generator=g)[: self.s.dci_samples]
        codes = []
        for start in range(0, len(index), 500):
            batch = data.batch(index[start: start + 500])
            with torch.inference_mode():
                latents = self.model.encode(batch["image"].to(self.device))
                codes.append(getattr(latents, which).flatten(1).float().cpu())
        return torch.cat(codes).numpy(), data.labels[index].float().numpy()

    def _examples(self, name: str, index: torch.Tensor, g: torch.Generator, on_examples: Callable) -> None:
        """A grid per variable: factual, reconstruction, counterfactual at a traversal of values (and truth)."""
        batch = self.test.batch(index)
        var = self.graph[name]
        lo, hi = var.range if var.range else (self._marginal(name, 1, g).item(),) * 2
        value = torch.linspace(lo, hi, len(index))
        do = {name: value}
        result = self._sweep(batch["image"], [(do, self.s.guidance)], batch.get("class"), batch["labels"].float(),
                             reconstruct=True)
        rows = [batch["image"], result.reconstructed().float().cpu(), result.images[0].float().cpu()]
        labels = ["factual", "reconstruction", f"do({name})"]
        if self.scm is not None:
            rows.append(self.scm.counterfactual(index.tolist(), do)[0])
            labels.append("truth")
        on_examples(f"examples-do-{name}", rows, labels, [f"{name}={v:.3g}" for v in value.tolist()])


def gap_closed(noop: float, model: float, oracle: float) -> float | None:
    """Share of the distance from the no-op floor to the oracle that the model covers; None when the two floors
    are within 1e-6 (nothing to close)."""
    return (noop - model) / (noop - oracle) if abs(noop - oracle) > 1e-6 else None


def _class_kept(data: dict, suffix: str) -> dict[str, float]:
    """Share of counterfactuals whose predicted class is the factual image's ("model") and the same for the true
    counterfactuals ("oracle", where the SCM is known): the digit a do() on the stroke should keep."""
    out = {"model": data[f"class_kept{suffix}"].mean().item()}
    if f"class_kept_truth{suffix}" in data:
        out["oracle"] = data[f"class_kept_truth{suffix}"].mean().item()
    return out


def _truth_errors(cf: torch.Tensor, x: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """L1 and MSE of the counterfactuals to the true ones, beside the factual images' (the no-op floor)."""
    l1, factual_l1 = pixel_l1(cf, truth), pixel_l1(x, truth)
    return {"l1": l1.mean().item(), "mse": _mse(cf, truth).mean().item(), "factual_l1": factual_l1.mean().item(),
            "factual_mse": _mse(x, truth).mean().item(), "closer_than_factual": (l1 < factual_l1).float().mean().item()}


def _chunked(fn: Callable[[torch.Tensor], torch.Tensor], data: ImageDataset) -> torch.Tensor:
    """``fn`` over every image of ``data`` in chunks of 500, on the CPU."""
    index = torch.arange(len(data))
    return torch.cat([fn(data.batch(index[i: i + 500])["image"]).float().cpu() for i in range(0, len(index), 500)])


def _channel_means(images: torch.Tensor) -> torch.Tensor:
    """Per-channel mean pixel value (0-255) of float images (B, C, H, W) in [0, 1]."""
    return images.double().mean(dim=(0, 2, 3)).float() * 255


def pixel_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute error on the 0-255 scale."""
    return (a.float().cpu() - b.float().cpu()).abs().mean(dim=(1, 2, 3)) * 255


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float().cpu() - b.float().cpu()) * 255).pow(2).mean(dim=(1, 2, 3))
