"""Anti-causal predictors: small CNNs that read each graph variable (and optionally a class) off an image.

The evaluation suite measures the attributes of generated counterfactual images with these networks, so they
must not share anything with the model under test: each variable gets its own small convolutional regressor
trained on the real training split only and scored on the held-out test split. No augmentation is used
because the labels depend on geometry (a flip or shift changes the angle of a pendulum). The penultimate
features of all networks, concatenated, serve as the embedding for FID/KID-style distances.
Weights are stored as safetensors next to a JSON description; nothing is pickled.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..atomic import atomic_path, write_text
from ..data.base import ImageDataset
from ..graph import CausalGraph
from ..images import to_signed
from ..model import check_finite, load_state
from .report import to_json
from .truth import true_scm

FORMAT, VERSION = "causaldiffae-predictors", 1
CONFIG_NAME, WEIGHTS_NAME = "predictors.json", "predictors.safetensors"
DEFAULT_WIDTH, DEFAULT_STEPS = 16, 800
INTERVENTIONAL_CHECK = 300  # held-out true counterfactuals per intervened variable


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, GroupNorm and SiLU (GroupNorm: no batch statistics, same output in train and eval)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(math.gcd(cout, 8), cout), nn.SiLU())


class ConvNet(nn.Module):
    """A small CNN: coordinate channels, stride-2 stages up to ``4 * width`` channels, global average pool,
    linear head. The coordinates let global pooling keep the absolute positions that geometric labels need."""

    coords: torch.Tensor  # a buffer (2, image_size, image_size), registered in __init__

    def __init__(self, channels: int, image_size: int, width: int, outputs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(channels + 2, width)]
        cin, size, stage = width, image_size, 0
        while stage < 3 or size > 4:  # widths w, 2w, 4w, then 4w until at most 4x4 remains
            cout = width * 2 ** min(stage, 2)
            layers += [_conv(cin, cout, 2), _conv(cout, cout)]
            cin, size, stage = cout, (size + 1) // 2, stage + 1
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(4 * width, outputs)
        ramp = torch.linspace(-1, 1, image_size)
        self.register_buffer("coords", torch.stack([ramp[None, :].expand(image_size, -1),
                                                    ramp[:, None].expand(-1, image_size)]), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) -> pooled features (B, 4 * width)."""
        coords = self.coords.to(x).expand(x.shape[0], -1, -1, -1)
        return self.body(torch.cat([to_signed(x), coords], dim=1)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> head outputs (B, outputs)."""
        return self.head(self.features(x))


class Predictors(nn.Module):
    """One regressor per graph variable (outputs in normalised units) and an optional class classifier."""

    def __init__(self, graph: CausalGraph | Mapping[str, Any], image_size: int, channels: int,
                 width: int = DEFAULT_WIDTH, num_classes: int = 0, class_column: str | None = None) -> None:
        super().__init__()
        self.graph = graph if isinstance(graph, CausalGraph) else CausalGraph.from_dict(graph)
        for name, value, low in (("image_size", image_size, 8), ("channels", channels, 1), ("width", width, 1),
                                 ("num_classes", num_classes, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Predictors: {name} must be an integer >= {low}, got {value!r}")
        for var in self.graph.nodes:
            var.scale  # noqa: B018 - raises naming a variable without normalisation
        if num_classes == 1:
            raise ValueError("Predictors: a class classifier needs num_classes >= 2, got 1")
        self.image_size, self.channels, self.width = image_size, channels, width
        self.num_classes, self.class_column = num_classes, class_column if num_classes else None
        self.regressors = nn.ModuleList(ConvNet(channels, image_size, width, 1) for _ in self.graph.nodes)
        self.classifier = ConvNet(channels, image_size, width, num_classes) if num_classes else None
        self.held_out: dict[str, dict[str, float | int | None]] = {}
        self.held_out_split: str | None = None
        self.held_out_interventional: dict[str, dict[str, dict[str, float]]] = {}
        self.training_settings: dict[str, Any] = {}

    @property
    def variables(self) -> list[str]:
        """Names of the predicted variables, in the order of ``predict``'s columns."""
        return self.graph.variables

    @property
    def feature_dim(self) -> int:
        """Width F of ``features``: ``4 * width`` per network."""
        return 4 * self.width * (len(self.regressors) + (self.classifier is not None))

    @property
    def device(self) -> torch.device:
        """Where the networks' weights live."""
        return next(self.parameters()).device

    def check_images(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is a float tensor (B, channels, image_size, image_size)."""
        expected = (self.channels, self.image_size, self.image_size)
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor of shape (B, {', '.join(map(str, expected))}), "
                             f"got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"images must have shape (B, {', '.join(map(str, expected))}) for these predictors; "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"images must be floats in [0, 1], got dtype {x.dtype} (divide uint8 images by 255)")

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Regressor outputs (B, n_vars) in normalised units, with gradients (for training)."""
        return torch.cat([net(x) for net in self.regressors], dim=1)

    def _batched(self, x: torch.Tensor, fn: Any, batch_size: int) -> torch.Tensor:
        """Apply ``fn`` to chunks of ``x`` on the module's device without gradients; result on ``x``'s device."""
        self.check_images(x)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device, dtype = self.device, next(self.parameters()).dtype
        with torch.no_grad():
            outs = [fn(x[i : i + batch_size].to(device, dtype)) for i in range(0, len(x), batch_size)]
        if not outs:
            return fn(torch.zeros(0, *x.shape[1:], device=device, dtype=dtype)).to(x.device)
        return torch.cat(outs).to(x.device)

    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images float (B, C, H, W) in [0, 1] -> every variable in raw label units (B, n_vars), on x's device."""
        def raw(chunk: torch.Tensor) -> torch.Tensor:
            out = self.normalized(chunk)
            return self.graph.denormalize(out)

        return self._batched(x, raw, batch_size)

    def predict_class(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images float (B, C, H, W) in [0, 1] -> predicted class (B,) long; ValueError without a classifier."""
        classifier = self.classifier
        if classifier is None:
            raise ValueError("these predictors have no class classifier (train them with a class column)")
        return self._batched(x, lambda chunk: classifier(chunk).argmax(dim=1), batch_size)

    def features(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images float (B, C, H, W) in [0, 1] -> concatenated pooled features of every network (B, F)."""
        nets = [*self.regressors, *([self.classifier] if self.classifier is not None else [])]
        return self._batched(x, lambda chunk: torch.cat([net.features(chunk) for net in nets], dim=1), batch_size)

    def describe(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-ready data (what ``predictors.json`` holds)."""
        return {"format": FORMAT, "version": VERSION, "graph": self.graph.to_dict(), "image_size": self.image_size,
                "channels": self.channels, "width": self.width, "num_classes": self.num_classes,
                "class_column": self.class_column, "held_out_split": self.held_out_split,
                "held_out": self.held_out, "held_out_interventional": self.held_out_interventional,
                "training": self.training_settings}


def _resolve_normalization(graph: CausalGraph, labels: torch.Tensor) -> CausalGraph:
    """The graph with any missing normalisation set to the training labels' mean/std."""
    norms = {}
    for i, var in enumerate(graph.nodes):
        column = labels[:, i][~torch.isnan(labels[:, i])]
        if column.numel() == 0:
            raise ValueError(f"variable {var.name!r} has no labels in the train split: its predictor cannot be "
                             "trained")
        if var.normalization is None:
            if column.numel() < 2:
                raise ValueError(f"variable {var.name!r} has no normalization and fewer than 2 training labels")
            norms[var.name] = {"mean": column.mean().item(), "std": max(column.std().item(), 1e-6)}
    return graph.with_normalization(norms) if norms else graph



def train_predictors(dataset: ImageDataset, class_column: str | None = None, steps: int = DEFAULT_STEPS,
                     batch_size: int = 64, lr: float = 1e-3, seed: int = 0, progress: bool = True,
                     device: str | None = None, width: int = DEFAULT_WIDTH,
                     interventional: int | None = None) -> Predictors:
    """Train every predictor on the train split (AdamW, warm-up then cosine decay, L1 loss in normalised
    units, missing labels masked) and record held-out errors on the test split (val when there is none).

    ``interventional`` true counterfactuals of train rows under random interventions on every variable join
    the training images, so each predictor reads its own variable: on observational images alone a Pendulum
    shadow is a function of angle and light, and a shadow predictor learns that shortcut. Default: as many as
    the train split has images for Pendulum, 0 elsewhere (MorphoMNIST's thickness and intensity are measured
    by morphometry, docs/method-notes.md "Evaluation").

    ``class_column`` adds a classifier of ``dataset.classes`` (load the dataset with that class_column).
    Deterministic for a seed on the CPU; the returned predictors are in eval mode on ``device``."""
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"train_predictors: {name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"train_predictors: lr must be a positive number, got {lr!r}")
    if class_column is not None and dataset.classes is None:
        raise ValueError(f"class column {class_column!r}: the dataset has no classes; load it with "
                         f"class_column={class_column!r}")
    if "train" not in dataset.splits:
        raise ValueError(f"dataset {dataset.root} has no train split: predictors are trained on it")
    train = dataset.split("train")
    graph = _resolve_normalization(dataset.graph, train.labels)  # from the observational labels
    train = _with_interventions(train, interventional, seed)
    num_classes = 0
    if class_column is not None and dataset.classes is not None:
        num_classes = max(int(dataset.classes.max()) + 1, 2)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Predictors(graph, dataset.image_size, dataset.channels, width, num_classes, class_column)
    model.to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    generator = torch.Generator().manual_seed(seed)
    n, batch = len(train), min(batch_size, len(train))
    order, cursor = torch.randperm(n, generator=generator), 0
    bar = tqdm(total=steps * batch, unit="img", unit_scale=True, disable=not progress, dynamic_ncols=True,
               desc="predictors")
    start = time.monotonic()
    for step in range(steps):
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        data = train.batch(order[cursor : cursor + batch], dev)
        cursor += batch
        target = graph.normalize(data["labels"])
        present = ~torch.isnan(target)
        error = (model.normalized(data["image"]) - torch.nan_to_num(target)).abs() * present
        loss = (error.sum(dim=0) / present.sum(dim=0).clamp(min=1)).sum()
        if model.classifier is not None:
            loss = loss + F.cross_entropy(model.classifier(data["image"]), data["class"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.update(batch)
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    model.eval()
    model.training_settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                               "loss": "l1 (normalised units)", "train_images": n,
                               "interventional_images": train.splits.count("intervention"),
                               "seconds": round(time.monotonic() - start, 1), "device": str(dev)}
    held = next((s for s in ("test", "val") if s in dataset.splits), None)
    if held is not None:
        model.held_out_split, model.held_out = held, evaluate(model, dataset.split(held))
        model.held_out_interventional = interventional_errors(model, dataset.split(held), seed=seed)
    return model


def _with_interventions(train: ImageDataset, count: int | None, seed: int) -> ImageDataset:
    """The train split plus ``count`` rendered true counterfactuals (split name "intervention")."""
    scm = true_scm(train)
    if count is None:
        count = len(train) if scm is not None and scm.kind == "pendulum" else 0
    if count < 0 or isinstance(count, bool):
        raise ValueError(f"interventional must be a non-negative integer, got {count!r}")
    if not count:
        return train
    if scm is None:
        raise ValueError("interventional images need a dataset with a known SCM (pendulum or generated "
                         "morphomnist)")
    images, labels, rows = scm.random_interventions(count, torch.Generator().manual_seed(seed))
    return ImageDataset(train.root, train.graph, train.files + [f"intervention-{i}" for i in range(count)],
                        train.splits + ["intervention"] * count, torch.cat([train.images, images]),
                        torch.cat([train.labels, labels.to(train.labels.dtype)]),
                        None if train.classes is None else torch.cat([train.classes, train.classes[rows]]))


def evaluate(predictors: Predictors, data: ImageDataset, batch_size: int = 256) -> dict[str, dict[str, Any]]:
    """Per variable: mean absolute error in raw and normalised units over labelled images (None when there
    are none) and their count ``n``; for the class (keyed by its column name): ``accuracy`` and ``n``."""
    x = data.images.float() / 255
    predicted = predictors.predict(x, batch_size).cpu()
    out: dict[str, dict[str, Any]] = {}
    for i, var in enumerate(predictors.graph.nodes):
        truth = data.labels[:, i]
        present = ~torch.isnan(truth)
        count = int(present.sum())
        mae = (predicted[present, i] - truth[present]).abs().mean().item() if count else None
        out[var.name] = {"mae": mae, "mae_normalized": mae / var.scale[1] if mae is not None else None, "n": count}
    if predictors.classifier is not None and data.classes is not None:
        correct = (predictors.predict_class(x, batch_size).cpu() == data.classes).float()
        out[str(predictors.class_column)] = {"accuracy": correct.mean().item() if len(correct) else None,
                                             "n": len(correct)}
    return out


def interventional_errors(predictors: Predictors, data: ImageDataset, count: int = INTERVENTIONAL_CHECK,
                          seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """How well the predictors read true counterfactuals (``{}`` without a known SCM): for each variable, ``count``
    rows of ``data`` under do() on it alone at values uniform over its range (readable renders only,
    ``TrueSCM.random_interventions``). Per intervened variable, in normalised units: ``error``, every variable's
    mean absolute error to the counterfactual's true label; ``moved``, how far each other non-descendant's
    prediction moved from the factual image's (0 for a predictor that reads its own variable only)."""
    scm = true_scm(data)
    if scm is None:
        return {}
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor([predictors.graph[name].scale[1] for name in scm.variables])
    columns = [predictors.variables.index(name) for name in scm.variables]  # matched by name
    out = {}
    for name in scm.variables:
        images, labels, rows = scm.random_interventions(count, generator, on=[name])
        predicted = predictors.predict(images.float() / 255)[:, columns]
        factual = predictors.predict(data.images[rows].float() / 255)[:, columns]
        error = ((predicted - labels).abs().mean(dim=0) / scales).tolist()
        moved = ((predicted - factual).abs().mean(dim=0) / scales).tolist()
        affected = data.graph.affected([name])
        out[name] = {"error": dict(zip(scm.variables, error, strict=True)),
                     "moved": {v: m for v, m in zip(scm.variables, moved, strict=True) if v not in affected}}
    return out


def save_predictors(predictors: Predictors, directory: str | Path) -> Path:
    """Write ``predictors.safetensors`` and ``predictors.json`` into ``directory`` (atomically, each file)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"cannot save predictors into {directory}: it is a file")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in predictors.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    write_text(directory / CONFIG_NAME, to_json(predictors.describe(), indent=2))  # NaN/inf as null
    return directory


def load_predictors(directory: str | Path, device: str | torch.device = "cpu") -> Predictors:
    """Load predictors written by ``save_predictors``; a missing, corrupt or mismatched file raises naming it."""
    directory = Path(directory)
    path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} holds no trained predictors")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"corrupt predictors file {path}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a predictors file (format {FORMAT!r} expected)")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} has version {meta.get('version')!r}; this causaldiffae reads version {VERSION}")
    try:
        model = Predictors(meta["graph"], meta["image_size"], meta["channels"], meta["width"],
                           meta.get("num_classes", 0), meta.get("class_column"))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is invalid: {err!r}") from None
    model.held_out = dict(meta.get("held_out") or {})
    model.held_out_split = meta.get("held_out_split")
    model.held_out_interventional = dict(meta.get("held_out_interventional") or {})
    model.training_settings = dict(meta.get("training") or {})
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (it belongs with {path})")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"corrupt predictors weights {weights}: {err}") from None
    # checked here, as a model's are, not later as NaN features of every image
    check_finite(state, weights, "their training diverged or the file is damaged; train them again "
                                 "(causaldiffae predictors train)")
    load_state(model, state, weights)
    return model.to(device).eval()


__all__ = ["ConvNet", "Predictors", "evaluate", "interventional_errors", "load_predictors", "save_predictors",
           "train_predictors"]
