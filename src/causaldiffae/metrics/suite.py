"""The evaluation suite: every metric of evaluation.md for one model on a dataset's test split, over seeds.

Per seed: ``n`` test images (a seeded draw), each with one single-variable intervention (variables in turn,
values drawn from the test split's marginal of that variable) and, per batch, one random multi-variable
intervention; one DDIM abduction serves both. Composition (1 and 10 null-intervention cycles), reversibility
(re-abducting the counterfactual) and the guidance sweep run on the first
``subset`` images, which keeps 1,000 interventions within half an hour on two CPU cores. Pixel errors are on
the 0-255 scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from ..counterfactual import DEFAULT_DEPTH, Abduction, counterfactual, sweep
from ..data.base import ImageDataset
from ..model import CausalDiffAE
from . import dci, minimality, realism
from .effectiveness import attribute_errors, movement, non_descendant_change, normalized
from .predictors import Predictors
from .truth import TrueSCM, known_labels, morphometry_labels, true_scm

MULTI = "multi"


@dataclass
class Settings:
    """What an evaluation run does; saved with its results."""

    n: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 50
    guidance: float = 1.0
    depth: float = DEFAULT_DEPTH
    abduction: Abduction = "ddim"
    batch_size: int = 50
    """Images per abduction; 50 is the fastest on a CPU, a GPU wants a few hundred."""
    subset: int = 50
    """Images of the 10-cycle composition and the guidance sweep."""
    cycles: int = 10
    weights: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    dci_samples: int = 2000
    examples: int = 6
    """Images per variable in the example grids (seed of the first run only)."""

    def __post_init__(self) -> None:
        if self.n < 1 or self.batch_size < 1 or self.subset < 0 or self.cycles < 1 or self.steps < 1:
            raise ValueError(f"evaluation settings must be positive: n={self.n}, batch_size={self.batch_size}, "
                             f"subset={self.subset}, cycles={self.cycles}, steps={self.steps}")
        if not self.seeds:
            raise ValueError("give at least one seed")


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
    settings = settings or Settings()
    if dataset.graph.variables != model.graph.variables:
        raise ValueError(f"the dataset's variables {dataset.graph.variables} differ from the model's "
                         f"{model.graph.variables}")
    if list(predictors.variables) != model.graph.variables:
        raise ValueError(f"the predictors read {list(predictors.variables)}, the model has {model.graph.variables}")
    context = _Context(model, dataset, predictors, settings)
    reversed_rows = len(model.graph) * math.ceil(settings.subset / len(model.graph))
    work = len(settings.seeds) * (settings.n + min(settings.n, reversed_rows) + settings.subset * (settings.cycles + 1))
    bar = tqdm(total=work, unit="img", desc="evaluate", disable=not progress, dynamic_ncols=True)
    seeds = []
    for i, seed in enumerate(settings.seeds):
        seeds.append(context.run_seed(seed, bar, on_examples if i == 0 else None))
    bar.close()
    return {"settings": asdict(settings), "variables": model.graph.variables, "predictors": predictors.held_out,
            "true_scm": context.scm.kind if context.scm else None, "seeds": seeds}


class _Context:
    """What every seed shares: the model, the test split, its predictor readings and features."""

    def __init__(self, model: CausalDiffAE, dataset: ImageDataset, predictors: Predictors, settings: Settings) -> None:
        self.model, self.full, self.predictors, self.s = model, dataset, predictors, settings
        self.test = dataset.split("test")
        self.scm: TrueSCM | None = true_scm(self.test)
        self.graph = model.graph
        self.device = next(model.parameters()).device
        self.real_features = self._chunked(predictors.features, torch.arange(len(self.test)))

    def _chunked(self, fn: Callable[[torch.Tensor], torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        out = [fn(self.test.batch(index[i: i + 500])["image"]).float().cpu() for i in range(0, len(index), 500)]
        return torch.cat(out)

    # -- one seed ----------------------------------------------------------------------------------------
    def run_seed(self, seed: int, bar: tqdm, on_examples: Callable | None) -> dict:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.test), generator=g)
        picks = order.repeat(math.ceil(self.s.n / len(order)))[: self.s.n]
        names = self.graph.variables
        rows = {name: picks[i:: len(names)] for i, name in enumerate(names)}
        results: dict = {"effectiveness": {}, "noop_floor": {}, "minimality": {}, "dag_consistency": {}}
        if self.scm is not None:
            results["truth"] = {}
        passes = []
        for name, index in rows.items():
            data = self._main_pass(name, index, g, bar, math.ceil(self.s.subset / len(names)))
            passes.append(data)
            self._score(results, name, data, index)
            if on_examples is not None:
                self._examples(name, index[: self.s.examples], g, on_examples)
        self._score_multi(results, passes)
        reversibility = [d.get("reversibility", torch.zeros(0)) for d in passes]
        results["reversibility_l1"] = torch.cat(reversibility).mean().item()  # NaN with subset 0
        features = torch.cat([d["features_cf"] for d in passes])
        reference = self.real_features
        kid, kid_std = realism.kernel_inception_distance(features.numpy(), reference.numpy(), seed=seed)
        factual = reference[picks[: len(features)] % len(reference)]
        kid_f, _ = realism.kernel_inception_distance(factual.numpy(), reference.numpy(), seed=seed)
        results["realism"] = {"fid": realism.frechet_distance(features.numpy(), reference.numpy()), "kid": kid,
                              "kid_std": kid_std, "fid_factual": realism.frechet_distance(factual.numpy(),
                                                                                           reference.numpy()),
                              "kid_factual": kid_f}
        sub = picks[: self.s.subset]
        if len(sub):
            results["composition"] = self._composition(sub, bar)
            results["guidance_sweep"] = self._guidance_sweep(sub, g)
        if self.model.encoder is not None:
            results["dci"] = self._dci(seed)
        return results

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
            result = sweep(self.model, x, columns, self.s.steps, self.s.abduction, self.s.depth, generator=g,
                           classes=batch.get("class"), labels=labels)
            cf, cf_multi = (im.float().cpu() for im in result.images)
            m = max(0, min(len(rows), reverse - start))
            if m:
                classes = batch["class"][:m] if "class" in batch else None
                back = counterfactual(self.model, cf[:m], {name: labels[:m, self.graph.index(name)]}, self.s.steps,
                                      self.s.guidance, self.s.abduction, self.s.depth, generator=g, classes=classes,
                                      labels=result.labels_cf[0][:m].cpu()).float().cpu()
                data.add(reversibility=_l1(back, x[:m]))
            intended, truth = self._intended(rows, single)
            intended_multi, truth_multi = self._intended(rows, multi)
            data.add(x=x, cf=cf, intended=intended, intended_multi=intended_multi,
                     predicted_x0=self.predictors.predict(x).float(), predicted_cf=self.predictors.predict(cf),
                     predicted_multi=self.predictors.predict(cf_multi), features_cf=self.predictors.features(cf),
                     features_x0=self.predictors.features(x), value=single[name])
            if truth is not None:
                data.add(truth=truth, truth_multi=truth_multi, cf_multi=cf_multi)
            bar.update(len(rows) + m)
        return {key: data[key] for key in data.chunks}

    def _score(self, results: dict, name: str, data: dict, index: torch.Tensor) -> None:
        key = f"do({name})"
        graph = self.graph
        results["effectiveness"][key] = attribute_errors(graph, data["predicted_cf"], data["intended"])
        results["noop_floor"][key] = attribute_errors(graph, data["predicted_x0"], data["intended"])
        moved = movement(graph, data["predicted_x0"], data["predicted_cf"])
        truth_moved = movement(graph, self._labels(index), data["intended"])
        results["dag_consistency"][key] = {
            v: {"moved": moved[v], "true_change": truth_moved[v],
                "allowed": v in graph.affected([name])} for v in graph.variables}
        column = graph.index(name)
        reference_values = self.test.labels[:, column].float().numpy()
        cld = minimality.counterfactual_latent_divergence(
            data["features_x0"].numpy(), data["features_cf"].numpy(), self.real_features.numpy(), reference_values,
            self._labels(index)[:, column].numpy(), data["value"].numpy(), minimality.quantile_bins(reference_values))
        results["minimality"][key] = {"non_descendant_change": non_descendant_change(graph, [name], moved),
                                      "cld": cld["cld"], "cld_p1": cld["p1"], "cld_p2": cld["p2"]}
        if "truth" in data:
            l1, factual_l1 = _l1(data["cf"], data["truth"]), _l1(data["x"], data["truth"])
            results["truth"][key] = {"l1": l1.mean().item(), "mse": _mse(data["cf"], data["truth"]).mean().item(),
                                     "factual_l1": factual_l1.mean().item(),
                                     "factual_mse": _mse(data["x"], data["truth"]).mean().item(),
                                     "closer_than_factual": (l1 < factual_l1).float().mean().item()}
            if self.scm is not None and self.scm.kind == "morphomnist":
                measured = morphometry_labels(data["cf"])
                results["truth"][key]["morphometry"] = attribute_errors(graph, measured, data["intended"])

    def _score_multi(self, results: dict, passes: list[dict]) -> None:
        """The multi-variable interventions of every batch, scored together."""
        def joined(key: str) -> torch.Tensor:
            return torch.cat([d[key] for d in passes])

        results["effectiveness"][MULTI] = attribute_errors(self.graph, joined("predicted_multi"),
                                                           joined("intended_multi"))
        if "truth" in results:
            cf, truth = joined("cf_multi"), joined("truth_multi")
            results["truth"][MULTI] = {"l1": _l1(cf, truth).mean().item(), "mse": _mse(cf, truth).mean().item()}

    def _composition(self, index: torch.Tensor, bar: tqdm) -> dict:
        """L1 to x0 after each of ``cycles`` null interventions (each re-abducts its input)."""
        curve = []
        for start in range(0, len(index), self.s.batch_size):
            rows = index[start: start + self.s.batch_size]
            batch = self.test.batch(rows)
            x = current = batch["image"]
            errors = []
            for _ in range(self.s.cycles):
                current = counterfactual(self.model, current, {}, self.s.steps, self.s.guidance, self.s.abduction,
                                         self.s.depth, classes=batch.get("class"),
                                         labels=batch["labels"]).float().cpu()
                errors.append(_l1(current, x))
                bar.update(len(rows))
            curve.append(torch.stack(errors, dim=1))
            bar.update(len(rows))
        mean = torch.cat(curve).mean(dim=0)
        return {"l1_1": mean[0].item(), f"l1_{self.s.cycles}": mean[-1].item(), "curve": mean.tolist()}

    def _guidance_sweep(self, index: torch.Tensor, g: torch.Generator) -> dict:
        """Effectiveness on the intervened variable (normalised MAE) and null-intervention L1 for each weight w."""
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
            result = sweep(self.model, x, columns, self.s.steps, self.s.abduction, self.s.depth, generator=g,
                           classes=batch.get("class"), labels=labels)
            intended, _ = self._intended(rows, do)
            column = self.graph.index(name)
            for j, w in enumerate(weights):
                predicted = self.predictors.predict(result.images[j].float())
                diff = normalized(self.graph, predicted.float().cpu()) - normalized(self.graph, intended)
                errors[w].append(diff[:, column].abs())
                l1[w].append(_l1(result.images[len(weights) + j].float().cpu(), x))
        return {f"w={w:g}": {"effectiveness": torch.cat(errors[w]).mean().item(),
                             "composition_l1": torch.cat(l1[w]).mean().item()} for w in weights}

    def _dci(self, seed: int) -> dict:
        """DCI of the model's causal latents z against the labels, GBT per factor; per dimension and per block."""
        train = self.full.split("train") if self.full.splits.count("train") >= 10 else self.test  # tiny data
        codes_train, labels_train = self._codes(train, seed)
        codes_test, labels_test = self._codes(self.test, seed + 1)
        return dci.dci(codes_train, labels_train, codes_test, labels_test, block_size=self.model.config.latent_dim,
                       seed=seed)

    def _codes(self, data: ImageDataset, seed: int) -> tuple:
        g = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(data), generator=g)[: self.s.dci_samples]
        codes = []
        for start in range(0, len(index), 500):
            batch = data.batch(index[start: start + 500])
            with torch.inference_mode():
                codes.append(self.model.encode(batch["image"].to(self.device)).z.flatten(1).float().cpu())
        return torch.cat(codes).numpy(), data.labels[index].float().numpy()

    def _examples(self, name: str, index: torch.Tensor, g: torch.Generator, on_examples: Callable) -> None:
        """A grid per variable: factual, reconstruction, counterfactual at a traversal of values (and truth)."""
        batch = self.test.batch(index)
        var = self.graph[name]
        lo, hi = var.range if var.range else (self._marginal(name, 1, g).item(),) * 2
        value = torch.linspace(lo, hi, len(index))
        do = {name: value}
        result = counterfactual(self.model, batch["image"], do, self.s.steps, self.s.guidance, self.s.abduction,
                                self.s.depth, reconstruct=True, return_details=True, classes=batch.get("class"),
                                labels=batch["labels"].float())
        rows = [batch["image"], result.reconstruction.float().cpu(), result.images.float().cpu()]
        labels = ["factual", "reconstruction", f"do({name})"]
        if self.scm is not None:
            rows.append(self.scm.counterfactual(index.tolist(), do)[0])
            labels.append("truth")
        on_examples(f"examples-do-{name}", rows, labels, [f"{name}={v:.3g}" for v in value.tolist()])


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute error on the 0-255 scale."""
    return (a.float().cpu() - b.float().cpu()).abs().mean(dim=(1, 2, 3)) * 255


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float().cpu() - b.float().cpu()) * 255).pow(2).mean(dim=(1, 2, 3))


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2) with a clear error."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds is empty")
    return seeds


def summarize(per_seed: Sequence[dict]) -> dict:
    """Mean and spread (std over seeds) of every number, keeping the nesting; lists element-wise."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: summarize([s[k] for s in per_seed]) for k in first if all(k in s for s in per_seed)}
    if isinstance(first, bool):
        return first
    if isinstance(first, (int, float)):
        values = torch.tensor([float(v) for v in per_seed], dtype=torch.float64)
        std = values.std(unbiased=False).item() if len(values) > 1 else 0.0
        return {"mean": values.mean().item(), "std": std, "values": values.tolist()}
    if isinstance(first, list):
        matrix = torch.tensor(per_seed, dtype=torch.float64)
        return {"mean": matrix.mean(dim=0).tolist(), "std": matrix.std(dim=0, unbiased=False).tolist()}
    return first
