"""The published Morpho-MNIST test digits under the 2024 counterfactual image benchmark's protocol (Melistas et al.,
"Benchmarking Counterfactual Image Generation", NeurIPS 2024 Datasets & Benchmarks), read by our instruments.

Their protocol, as their code reads: the 10,000 t10k digits; one parent at a time; each do() value is a test-set
value of that attribute forced into another bin than the factual value (10 edges spaced evenly over fixed
bounds); under do(thickness) the child intensity is recomputed by the SCM with the digit's own noise. Their
readers are anti-causal CNNs (the thickness reader is also given the intensity label); ours are the morphometry
of the image (measured) and the project's predictors (predicted), in separate columns. The published rows are
their Table's numbers, on their readers, with their models trained on 60,000 digits at 32 px.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .counterfactual import abduct_noise, decode
from .data import morphomnist
from .metrics.predictors import Predictors
from .metrics.report import table
from .metrics.truth import morphometry_labels
from .model import CausalDiffAE

BOUNDS = {"thickness": (0.876, 6.256), "intensity": (66.6, 254.9)}  # the protocol's fixed bin bounds
EDGES = 10
CELLS = ("do(t): thickness", "do(t): intensity", "do(i): intensity", "do(i): thickness",
         "digit kept do(t)", "digit kept do(i)", "digit do(digit)")
PUBLISHED = {  # Melistas et al. 2024, Morpho-MNIST, their anti-causal readers (± over test batches omitted)
    "HVAE": (0.086, 1.99, 3.52, 0.224, 0.985, 0.935, 0.972),
    "VAE": (0.109, 3.15, 5.33, 0.333, 0.989, 0.988, 0.775),
    "GAN": (0.228, 9.43, 15.14, 0.680, 0.961, 0.966, 0.451),
}


@dataclass
class BenchmarkSettings:
    """What a benchmark run does; saved with its results."""

    n: int = 10_000
    """t10k digits per seed (all 10,000 by default), drawn with the seed."""
    seeds: tuple[int, ...] = (0,)
    known_labels: bool = False
    """Abduct the intensity noise from the factual labels (as the benchmark's models get the factual parents)."""
    batch_size: int = 250


def published_digits(folder: str | Path) -> dict[str, torch.Tensor]:
    """The t10k digits of a published Morpho-MNIST folder: images (N, 1, 28, 28) in [0, 1], labels (N, 2) as
    (thickness, intensity) and digits (N,)."""
    data = morphomnist.read_published(folder)
    if "test" not in data:
        raise FileNotFoundError(f"{folder} has no t10k-images-idx3-ubyte[.gz] with t10k-morpho.csv")
    test = data["test"]
    if np.isnan(test["digit"]).any():
        raise ValueError(f"{folder} has no t10k-labels-idx1-ubyte[.gz]: the digit classes are needed")
    return {"images": torch.from_numpy(test["images"]).float()[:, None] / 255,
            "labels": torch.tensor(np.stack([test["thickness"], test["intensity"]], 1), dtype=torch.float32),
            "digits": torch.from_numpy(test["digit"]).long()}


def bin_of(values: torch.Tensor, name: str) -> torch.Tensor:
    """The protocol's bin of each value: 10 edges spaced evenly over the attribute's fixed bounds."""
    edges = torch.linspace(*BOUNDS[name], EDGES, dtype=torch.float64)
    return torch.bucketize(values.double(), edges)


def do_values(column: torch.Tensor, factual: torch.Tensor, name: str, generator: torch.Generator,
              tries: int = 1000) -> torch.Tensor:
    """One do() value per factual value: a value of ``column`` (the test set's) drawn at random, redrawn until it
    falls in another bin than the factual value."""
    out = column[torch.randint(len(column), (len(factual),), generator=generator)]
    for _ in range(tries):
        same = bin_of(out, name) == bin_of(factual, name)
        if not same.any():
            return out
        out[same] = column[torch.randint(len(column), (int(same.sum()),), generator=generator)]
    raise RuntimeError(f"no {name} value in another bin found in {tries} draws")


def intended_intensity(thickness: torch.Tensor, intensity: torch.Tensor, new_thickness: torch.Tensor) -> torch.Tensor:
    """The SCM's intensity after do(thickness), with each digit's own noise (abducted from its labels)."""
    noise = morphomnist.intensity_noise(thickness.double().numpy(), intensity.double().clamp(64.01, 254.99).numpy())
    return torch.tensor(morphomnist.intensity_of(new_thickness.double().numpy(), noise), dtype=torch.float32)


@torch.inference_mode()
def run_benchmark(model: CausalDiffAE, digits: dict[str, torch.Tensor], predictors: Predictors | None,
                  settings: BenchmarkSettings, progress: bool = True) -> dict[str, Any]:
    """Every cell of the benchmark's table, read by morphometry (measured) and, with ``predictors``, by them
    (predicted), beside the no-op floor (the factual digit as the counterfactual) read the same way; mean ± std
    over ``settings.seeds``."""
    if model.graph.variables != ["thickness", "intensity"] or model.config.channels != 1 \
            or model.config.image_size != 28:
        raise ValueError("the Morpho-MNIST benchmark needs a model of 28 px grey digits over (thickness, intensity)")
    n = min(settings.n, len(digits["images"]))
    per_seed = []
    for seed in settings.seeds:
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randperm(len(digits["images"]), generator=generator)[:n].sort().values
        parts: dict[str, list[torch.Tensor]] = {}
        bar = tqdm(total=n, desc=f"benchmark seed {seed}", unit="img", disable=not progress)
        for start in range(0, n, settings.batch_size):
            index = rows[start:start + settings.batch_size]
            for key, value in _batch(model, digits, index, predictors, settings, generator).items():
                parts.setdefault(key, []).append(value)
            bar.update(len(index))
        bar.close()
        per_seed.append({key: float(torch.cat(v).float().mean()) for key, v in parts.items()})
    keys = per_seed[0].keys()
    summary = {k: {"mean": float(np.mean([s[k] for s in per_seed])),
                   "std": float(np.std([s[k] for s in per_seed])) if len(per_seed) > 1 else None} for k in keys}
    return {"settings": {**asdict(settings), "n": n}, "knobs": asdict(model.knobs), "seeds": per_seed,
            "summary": summary}


def _batch(model: CausalDiffAE, digits: dict[str, torch.Tensor], index: torch.Tensor, predictors: Predictors | None,
           settings: BenchmarkSettings, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The per-digit errors of one batch: cells by reader (measured, predicted) and their no-op floors."""
    x, labels, classes = digits["images"][index], digits["labels"][index], digits["digits"][index]
    thickness, intensity = labels[:, 0], labels[:, 1]
    new_t = do_values(digits["labels"][:, 0], thickness, "thickness", generator)
    new_i = do_values(digits["labels"][:, 1], intensity, "intensity", generator)
    new_digit = (classes + torch.randint(1, 10, classes.shape, generator=generator)) % 10
    lat = model.encode(x)
    known = labels if settings.known_labels else None
    cls = classes if model.config.num_classes else None
    noise = abduct_noise(model, x, lat.z, classes=cls)
    x_t = decode(model, noise, model.intervene(lat, {"thickness": new_t}, known), classes=cls).cpu()
    x_i = decode(model, noise, model.intervene(lat, {"intensity": new_i}, known), classes=cls).cpu()
    intended = {"t": torch.stack([new_t, intended_intensity(thickness, intensity, new_t)], 1),
                "i": torch.stack([thickness, new_i], 1)}
    out: dict[str, torch.Tensor] = {}
    readers = {"measured": morphometry_labels}
    if predictors is not None:
        readers["predicted"] = lambda images: predictors.predict(images.to(predictors.device)).float().cpu()
    for reader, read in readers.items():
        for suffix, (cf_t, cf_i) in (("", (x_t, x_i)), ("_noop", (x, x))):
            got_t, got_i = read(cf_t), read(cf_i)
            out[f"{reader}/do(t): thickness{suffix}"] = (got_t[:, 0] - intended["t"][:, 0]).abs()
            out[f"{reader}/do(t): intensity{suffix}"] = (got_t[:, 1] - intended["t"][:, 1]).abs()
            out[f"{reader}/do(i): intensity{suffix}"] = (got_i[:, 1] - intended["i"][:, 1]).abs()
            out[f"{reader}/do(i): thickness{suffix}"] = (got_i[:, 0] - intended["i"][:, 0]).abs()
    if predictors is not None and predictors.classifier is not None:
        read_class = predictors.predict_class
        out["digit kept do(t)"] = (read_class(x_t).cpu() == classes).float()
        out["digit kept do(i)"] = (read_class(x_i).cpu() == classes).float()
        out["digit kept_noop"] = (read_class(x).cpu() == classes).float()  # the reader's own accuracy
        if model.config.num_classes:
            x_d = decode(model, noise, lat.z, classes=new_digit).cpu()
            out["digit do(digit)"] = (read_class(x_d).cpu() == new_digit).float()
    return {k: v[~torch.isnan(v)] for k, v in out.items()}


def markdown(result: dict[str, Any], run: str) -> str:
    """The benchmark's table: our rows by reader, their no-op floors, and the published rows."""
    s, summary = result["settings"], result["summary"]

    def cell(key: str, digits: int = 3) -> str:
        entry = summary.get(key)
        if entry is None or entry["mean"] is None or math.isnan(entry["mean"]):
            return "–"
        spread = f" ± {entry['std']:.{digits}f}" if entry["std"] is not None else ""
        return f"{entry['mean']:.{digits}f}{spread}"

    digits_cells = [cell("digit kept do(t)"), cell("digit kept do(i)"), cell("digit do(digit)")]
    header = ["model (reader)", *CELLS]
    rows = []
    for reader in ("measured", "predicted"):
        if f"{reader}/do(t): thickness" not in summary:
            continue
        rows.append([f"**causaldiffae** ({reader})", *(cell(f"{reader}/{c}") for c in CELLS[:4]), *digits_cells])
        rows.append([f"no-op floor ({reader})", *(cell(f"{reader}/{c}_noop") for c in CELLS[:4]),
                     cell("digit kept_noop"), cell("digit kept_noop"), "–"])
    rows += [[f"{name} (published, their readers)", *(f"{v:g}" for v in values)] for name, values in PUBLISHED.items()]
    ratios = [f"{c}: {summary[f'measured/{c}']['mean'] / summary[f'measured/{c}_noop']['mean']:.3f}"
              for c in CELLS[:3] if f"measured/{c}" in summary]
    return "\n".join([
        f"# The Morpho-MNIST benchmark of Melistas et al. (2024) on `{run}`\n",
        f"{s['n']:,} published t10k digits per seed, seeds {list(s['seeds'])}; one parent at a time, do() values from "
        "the test set in another bin than the factual value; the child intensity under do(t) recomputed by the SCM; "
        f"noise abducted from {'the factual labels' if s['known_labels'] else 'the model reading of the image'}; "
        f"the model's knobs: depth {result['knobs']['depth']}, guidance {result['knobs']['guidance']}, "
        f"{result['knobs']['steps']} steps. MAE in raw units (px, grey levels); digit columns are the share the "
        "digit reader reads as the factual digit (do(t), do(i)) or as the new one (do(digit)); ± is the spread over "
        "seeds. The no-op floor reads the factual digit as the counterfactual (for the digit columns: the reader's "
        "own accuracy).\n",
        table(header, rows),
        "Model / no-op floor (measured): " + "; ".join(ratios) + ".\n",
        "Not the same protocol as the published rows: their readers are CNNs trained on their data (the thickness "
        "reader also sees the intensity label), ours the morphometry of the image and our predictors; their models "
        "train on 60,000 digits at 32 px (padded), ours on the data its config names at 28 px.\n"])

