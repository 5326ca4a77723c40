"""The demo: counterfactual traversals of the shipped Pendulum model against the true counterfactuals.

``causaldiffae demo --out DIR`` writes, for each variable, a traversal grid (model rows beside the rendered
ground truth), a reconstruction grid, and ``DIR/report.md`` that says what to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .atomic import write_text
from .counterfactual import DEFAULT_DEPTH, sweep
from .data import pendulum
from .images import save_grid
from .model import CausalDiffAE
from .training import checkpoint, load_run_config, train

SHIPPED = Path(__file__).parent / "pretrained" / "pendulum"

WHAT_TO_LOOK_AT = {
    "angle": "do(angle) must swing the pendulum to each angle and move its shadow with it (the shadow is a "
             "descendant); the sun and the background must stay as they are.",
    "light": "do(light) must move the sun along the top and move and stretch the shadow (a descendant); the "
             "pendulum itself must not move.",
    "shadow_length": "do(shadow_length) must change only the length of the shadow: it has no descendants, so "
                     "pendulum and sun stay put (the true counterfactual keeps the angle and the light).",
    "shadow_position": "do(shadow_position) must slide only the shadow along the ground; nothing upstream of it "
                       "may change.",
}


def run_demo(out: str | Path, model_dir: str | Path | None = None, train_minutes: float | None = None,
             steps: int = 50, depth: float = DEFAULT_DEPTH, n_images: int = 4, n_values: int = 7) -> Path:
    """Write the demo grids and report into ``out``; ``train_minutes`` trains from scratch first."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if train_minutes is not None:
        config = load_run_config(SHIPPED / "config.yaml", [f"train.max_minutes={train_minutes}",
                                                           "train.max_steps=1000000"])
        # resume only from a checkpoint: a run killed in its first checkpoint write leaves checkpoints/ empty
        model_dir = train(config, out / "run", resume=checkpoint.latest(out / "run") is not None)
    model = CausalDiffAE.from_pretrained(model_dir or SHIPPED)
    if tuple(model.graph.variables) != pendulum.VARIABLES:
        raise ValueError(f"the demo needs a Pendulum model (variables {list(pendulum.VARIABLES)}), "
                         f"got {model.graph.variables}")
    size = model.config.image_size
    test = [r for r in pendulum.samples() if r["split"] == "test"]
    factual = [{v: test[i][v] for v in pendulum.VARIABLES}
               for i in torch.linspace(0, len(test) - 1, n_images).round().long().tolist()]
    x = torch.stack([_tensor(pendulum.render(f["angle"], f["light"], size)) for f in factual])

    sections = []
    for var in model.graph.nodes:
        lo, hi = var.range
        values = np.linspace(lo, hi, n_values).tolist()
        result = sweep(model, x, [({var.name: v}, 1.0) for v in values], steps, depth=depth, reconstruct=True)
        truth = torch.stack([torch.stack([_tensor(pendulum.true_counterfactual(f, {var.name: v}, size)[0])
                                          for v in values]) for f in factual])  # (B, k, C, H, W)
        rows, labels = [], []
        for b in range(len(factual)):
            rows += [torch.cat([x[b : b + 1], result.images[:, b]]), torch.cat([x[b : b + 1], truth[b]])]
            labels += [f"model {b}", f"truth {b}"]
        name = f"traversal-{var.name}.png"
        save_grid(out / name, rows, labels, ["factual", *(f"{v:.3g}" for v in values)])
        model_err = (result.images.permute(1, 0, 2, 3, 4) - truth).abs().mean().item()
        noop_err = (x[:, None] - truth).abs().mean().item()
        sections.append(f"## do({var.name})\n\n![{var.name}]({name})\n\n{WHAT_TO_LOOK_AT.get(var.name, '')} "
                        f"Rows alternate the model's counterfactual and the rendered truth; the first column is "
                        f"the factual image. Mean absolute pixel error to the truth: model {model_err:.4f}, "
                        f"factual image as the answer {noop_err:.4f} (on [0, 1]).\n")
    recon = sweep(model, x, [({}, 1.0)], steps, depth=depth).images
    save_grid(out / "reconstruction.png", [x, recon], ["data", "recon"])
    recon_err = (recon - x).abs().mean().item()
    report = (f"# causaldiffae demo\n\nModel: `{model_dir or 'shipped Pendulum model'}`; {steps} DDIM steps, "
              f"inversion depth {depth}, guidance 1.0, {n_images} test images, {n_values} values per variable "
              f"across each variable's range.\n\n## Reconstruction (do = {{}})\n\n![reconstruction]"
              f"(reconstruction.png)\n\nTop: test images; bottom: DDIM inversion then decoding with the factual "
              f"latents. They should be indistinguishable (mean absolute error {recon_err:.4f}).\n\n"
              + "\n".join(sections))
    write_text(out / "report.md", report)
    return out


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255
