"""What each command of the command line does: one function per command, taking the parsed arguments.

``causaldiffae data check`` runs ``data_check(args)``, ``causaldiffae predictors train`` runs
``predictors_train(args)``, and so on (``cli.build_parser`` wires them). Each is a thin wrapper over the public
API: it checks its inputs and outputs up front, calls the API and prints what it wrote. torch and the modules
that need it are imported inside the functions, so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import memory
from .atomic import write_text
from .cli_args import floats, pair, parse_do, parse_index
from .metrics.settings import from_flags


def data_pendulum(args: argparse.Namespace) -> None:
    from .data import pendulum

    _output_folder(args.out, beside=True)
    out = pendulum.generate(args.out, args.size)
    print(f"wrote 7,308 Pendulum images ({args.size}x{args.size}) to {out}")


def data_morphomnist(args: argparse.Namespace) -> None:
    import csv

    from .data import morphomnist

    if args.published and args.renderings != 1:
        raise ValueError("--renderings applies to generated digits; a published folder has one rendering of each")
    _output_folder(args.out, beside=True)
    if args.published:
        out = morphomnist.convert_published(args.published, args.out, args.size)
    else:
        out = morphomnist.generate(args.out, args.size, mnist=args.mnist, seed=args.seed, renderings=args.renderings)
    with (out / "labels.csv").open(newline="") as fh:
        splits = [row["split"] for row in csv.DictReader(fh)]
    counts = " / ".join(f"{splits.count(s):,} {s}" for s in ("train", "val", "test") if s in splits)
    print(f"wrote {len(splits):,} Morpho-MNIST images ({counts}, {args.size}x{args.size}) to {out}")


def data_circuit(args: argparse.Namespace) -> None:
    from .data import circuit

    _output_folder(args.out, beside=True)
    out = circuit.convert(args.npz, args.out, args.size, args.test_fraction, args.seed)
    print(f"wrote CausalCircuit ({args.size}x{args.size}) to {out}")


def data_check(args: argparse.Namespace) -> None:
    from .data.check import summarize

    print(summarize(args.dir, args.size))


def graph_check(args: argparse.Namespace) -> int:
    """Exit status 1 when the labels reject an implied independence: a script can stop on it."""
    from .graph_check import check, check_markdown, read

    if args.out:
        _output_folder(args.out, names=("graph-check.md", "graph-check.json"))
    result = check(read(args.dir, args.split, args.graph), args.test, args.alpha, args.correction, args.max_given,
                   args.kci_rows, args.seed)
    _graph_report(args.out, "graph-check", check_markdown(result), result.to_dict())
    return 0 if result.passed else 1


def graph_suggest(args: argparse.Namespace) -> None:
    from .graph_check import read, suggest, suggest_markdown

    if args.out:
        _output_folder(args.out, names=("graph-suggest.md", "graph-suggest.json"))
    result = suggest(read(args.dir, args.split, args.graph), args.test, args.alpha, args.kci_rows, args.seed)
    _graph_report(args.out, "graph-suggest", suggest_markdown(result), result.to_dict())


def _graph_report(out: str | None, name: str, text: str, document: dict[str, Any]) -> None:
    """Print the report, and with --out write it as OUT/NAME.md and OUT/NAME.json (each atomically)."""
    from .metrics.report import to_json

    print(text)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_text(Path(out) / f"{name}.md", text)
        write_text(Path(out) / f"{name}.json", to_json(document, indent=2))
        print(f"wrote {Path(out) / f'{name}.md'} and {Path(out) / f'{name}.json'}")


def train(args: argparse.Namespace) -> None:
    from . import training

    config = training.load_run_config(args.config, args.set)
    _check_batch(config)
    run = training.train(config, args.out, resume=args.resume, overwrite=args.overwrite,
                         allow_config_change=args.allow_config_change)
    if os.environ.get("RANK", "0") == "0":  # once, also under torchrun / accelerate launch
        print(f"trained model in {run} (load it with CausalDiffAE.from_pretrained({str(run)!r}))")


def counterfactual(args: argparse.Namespace) -> None:
    import torch

    from .counterfactual import sweep
    from .images import save_grid
    from .metrics.report import to_json

    out = Path(args.out)
    report_path = out.with_suffix(".json")
    spread_path = out.with_name(f"{out.stem}-spread.png") if args.samples else None
    _outputs(args, out, report_path, *([spread_path] if spread_path else []))
    model = _load_model(args.run, args.precision)
    fixed, swept = parse_do(args.do, model.graph)
    weights = floats(args.guidance, "--guidance") if args.guidance is not None else [model.knobs.guidance]
    depth = model.knobs.depth if args.depth is None else args.depth
    steps = model.knobs.resolve_steps(args.steps)  # resolved here so that OUT.json records the steps used
    if swept and len(weights) > 1:
        raise ValueError("sweep either one --do range or --guidance, not both")
    x, labels, names, classes = inputs(args, model)
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
    result = sweep(model, x, columns, steps=steps, depth=depth, abduction=args.abduction, solver=args.solver,
                   classes=classes, generator=generator, latents=latents, reconstruct=True, samples=args.samples,
                   eta=args.eta)
    recon = result.reconstructed()
    if len(columns) == 1:
        shown = f"mean of {args.samples}" if args.samples else "counterfactual"
        save_grid(out, [x, recon, result.images[0]], ["factual", "recon", shown])
    else:
        rows = [torch.cat([x[b : b + 1], recon[b : b + 1], result.images[:, b].cpu()])
                for b in range(len(x))]
        save_grid(out, rows, [f"image {b}" for b in range(len(x))], ["factual", "recon", *headers])
    report: dict[str, Any] = {
        "images": names, "factual_labels": labels,
        "settings": {"steps": steps, "depth": depth, "abduction": args.abduction, "solver": args.solver,
                     "precision": args.precision, "seed": args.seed, "samples": args.samples, "eta": args.eta},
        "model_factual_estimate": _per_image(result.labels),
        "columns": [{"do": do, "guidance": w, "model_counterfactual_estimate": _per_image(result.column(i).labels_cf)}
                    for i, (do, w) in enumerate(columns)],
    }
    if result.spread is not None and spread_path is not None:
        report["spread_map"] = str(spread_path)
        for i, column in enumerate(report["columns"]):
            column["spread"] = _spread_report(result.column(i).spread)
        _save_spread(spread_path, result.spread, args.samples, headers)
    write_text(report_path, to_json(report, indent=2))
    print(f"wrote {out}{f', {spread_path}' if spread_path else ''} and {report_path}")


def _spread_report(spread: Any) -> list[dict[str, Any]]:
    """One column's spread per image, for OUT.json: the spread map's mean and maximum in grey levels (0-255) and
    the std of the model's reading of every variable in its units."""
    maps = spread.per_pixel * 255
    labels = _per_image(spread.labels_std)
    return [{"pixels_mean": float(m.mean()), "pixels_max": float(m.max()), "labels_std": labels[b]}
            for b, m in enumerate(maps)]


def _save_spread(path: Path, spread: Any, samples: int, headers: list[str]) -> None:
    """OUT-spread.png: the spread maps laid out as the grid's counterfactuals (one row for one column, else a row
    per image), on one colour scale from 0 to the largest spread (at least one grey level)."""
    from .images import save_heat_grid

    maps = spread.per_pixel * 255  # (columns, B, H, W)
    top = max(float(maps.max()), 1.0)
    label = f"std over {samples} samples, grey levels (0-255)"
    if len(maps) == 1:
        save_heat_grid(path, [maps[0]], top, label, ["spread"])
    else:
        save_heat_grid(path, [maps[:, b] for b in range(maps.shape[1])], top, label,
                       [f"image {b}" for b in range(maps.shape[1])], headers)


def sample(args: argparse.Namespace) -> None:
    import torch

    from .counterfactual import sample as sample_images
    from .images import save_grid

    _outputs(args, Path(args.out))
    model = _load_model(args.run, args.precision)
    fixed, swept = parse_do(args.do, model.graph)
    if swept:
        raise ValueError("causaldiffae sample takes fixed values (name=value), not ranges")
    size, pixels = model.config.image_size, model.config.channels * model.config.image_size**2
    tile = size * max(1, 96 // size) + 2  # the grid's enlarged tiles (images.grid), one RGB byte per pixel
    memory.check(args.n * (3 * tile**2 + 2 * 4 * pixels), f"--n {args.n:,} images of {size}x{size}",
                 "ask for fewer images (--n)")
    generator = torch.Generator().manual_seed(args.seed)
    images = sample_images(model, fixed, args.n, steps=args.steps, guidance=floats(args.guidance, "--guidance")[0],
                           classes=_classes(args, model, args.n), generator=generator)
    save_grid(args.out, [images])
    print(f"wrote {args.n} samples to {args.out}")


def demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    out = run_demo(args.out, args.model, args.train_minutes, args.steps, args.depth)
    print(f"wrote {out / 'report.md'} with its grids")


def explore(args: argparse.Namespace) -> None:
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


def predictors_train(args: argparse.Namespace) -> None:
    from .data import BUILTIN, load_dataset, open_dataset
    from .metrics.predictors import CONFIG_NAME, WEIGHTS_NAME, save_predictors, train_predictors
    from .metrics.report import interventional_lines

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


def evaluate(args: argparse.Namespace) -> None:
    import json

    from . import tracking
    from .evaluation import evaluate_run
    from .model import load_config
    from .reproduce import headline
    from .training import checkpoint

    settings = from_flags(args)
    trackers = tracking.names(args.log_with, "--log-with")
    tracking.check_installed(trackers, "--log-with")  # before the minutes of work, not after them
    _output_folder(args.out, args.run, ("metrics.json", "report.md", "guidance-sweep.png"))
    dataset = _dataset(args, load_config(Path(args.run)).image_size)
    report = evaluate_run(args.run, dataset, args.predictors, args.out, settings, device="cpu" if args.cpu else None)
    print(f"wrote {report}, {report.parent / 'metrics.json'} and the plots in {report.parent}")
    if trackers:  # the numbers as metrics.json holds them, at the training step of the model evaluated
        numbers = headline(json.loads((report.parent / "metrics.json").read_text()))
        latest = checkpoint.latest(Path(args.run))
        step = checkpoint.step_of(latest) if latest is not None else 0
        tracking.log_once(trackers, Path(args.out), "evaluate", numbers, step)
        print(f"logged {len(numbers)} headline numbers at step {step} to {', '.join(trackers)} "
              f"({Path(args.out) / tracking.LOGS / 'evaluate'} for file-based trackers)")


def mechanisms(args: argparse.Namespace) -> None:
    from .metrics.mechanisms import check_mechanisms
    from .metrics.report import mechanisms_markdown, to_json
    from .model import CausalDiffAE

    if (args.family or args.steps != 2000) and not args.fit:
        raise ValueError("--family and --steps go with --fit (they say how to refit the mechanisms)")
    if args.out:
        _output_folder(args.out, args.run, ("mechanisms.md", "mechanisms.json"))
    model = CausalDiffAE.from_pretrained(args.run)
    dataset = _dataset(args, model.config.image_size)
    if args.fit:
        family = args.family or (model.config.label_mechanism if model.config.label_mechanism != "none" else "spline")
        model = model.with_label_mechanism(family)
        val = dataset.split("val").labels if "val" in dataset.splits else None
        for fit in model.fit_mechanisms(dataset.split("train").labels, val, steps=args.steps, seed=args.seed,
                                        progress=True):
            print(f"mechanism {fit.line()}", file=sys.stderr)
        model.save_pretrained(args.run)
        print(f"saved the refit {family} mechanisms into {args.run}", file=sys.stderr)
    check = check_mechanisms(model, dataset, cf_split=args.split, n=args.n, seed=args.seed)
    text = mechanisms_markdown(check)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "mechanisms.md", text)
        write_text(out / "mechanisms.json", to_json(check))


def benchmark(args: argparse.Namespace) -> None:
    from .benchmark import BenchmarkSettings, markdown, published_digits, run_benchmark
    from .evaluation import portable
    from .metrics.predictors import load_predictors
    from .metrics.report import to_json
    from .metrics.settings import parse_seeds

    settings = BenchmarkSettings(args.n, parse_seeds(args.seeds), args.known_labels, args.batch_size)
    _output_folder(args.out, args.run, ("benchmark.md", "benchmark.json"))
    model = _load_model(args.run)
    digits = published_digits(args.published)
    predictors = load_predictors(args.predictors, device=next(model.parameters()).device) if args.predictors else None
    result = run_benchmark(model, digits, predictors, settings)
    result.update(run=portable(args.run), published=portable(args.published),
                  predictors=portable(args.predictors) if args.predictors else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(result, portable(args.run))
    write_text(out / "benchmark.md", text)
    write_text(out / "benchmark.json", to_json(result))
    print(text)


def tune(args: argparse.Namespace) -> None:
    from . import tune as tuning
    from .evaluation import portable
    from .knobs import Knobs, write_knobs
    from .metrics.predictors import load_predictors
    from .model import load_config

    settings = tuning.TuneSettings(tuple(floats(args.depths, "--depths")), tuple(floats(args.guidance, "--guidance")),
                                   args.n, args.steps, args.split, args.seed, args.batch_size, args.solver,
                                   args.abduction)
    _output_folder(args.out, args.run, ("tune.json", "tune.md"))
    dataset = _dataset(args, load_config(Path(args.run)).image_size)
    model = _load_model(args.run)
    predictors = load_predictors(args.predictors, device=next(model.parameters()).device) if args.predictors else None
    result = tuning.tune(model, dataset, settings, predictors)
    table = tuning.write_tuning(result, args.out, portable(args.run), portable(dataset.root))
    best, steps = result["best"], result["settings"]["steps"]  # the model's own steps where none were given
    print(f"chosen on {args.split}: depth {best['depth']:g}, guidance {best['guidance']:g} (at {steps} DDIM steps); "
          f"wrote {table}")
    if args.apply:  # the grid's steps too: the depth and weight were chosen at them
        knobs = Knobs(best["depth"], best["guidance"], steps, f"causaldiffae tune on the {args.split} split "
                      f"({settings.n} images, {steps} DDIM steps; one-standard-error choice)")
        print(f"wrote {write_knobs(args.run, knobs)}: the model's counterfactuals now use these by default")


def reproduce(args: argparse.Namespace) -> None:
    from .reproduce import reproduce as reproduce_all

    use = dict(pair(item, "--use") for item in args.use)
    table = reproduce_all(args.dataset, args.out, args.train_steps, from_flags(args), args.configs, use,
                          args.predictors, args.jobs, train_seeds=args.train_seeds, data_root=args.data,
                          label_fractions=args.label_fractions or (), only=args.only)
    print(f"wrote {table}")


# -- inputs and outputs of the commands ---------------------------------------------------------------------


def inputs(args: argparse.Namespace, model: Any) -> tuple[Any, list[dict[str, float]] | None, list[str], Any]:
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


def _load_model(run: str, precision: str = "fp32") -> Any:
    """The model of ``run`` on the GPU when there is one, its UNet at ``precision`` (a warning where bf16 is
    emulated)."""
    import torch

    from .model import CausalDiffAE
    from .precision import check_precision, emulation_warning

    model = CausalDiffAE.from_pretrained(run, device="cuda" if torch.cuda.is_available() else "cpu")
    model.precision = check_precision(precision)
    warning = emulation_warning(model.precision, next(model.parameters()).device)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return model


def _check_batch(config: Any) -> None:
    """Refuse up front a training batch whose images and first UNet activation alone would fill the memory."""
    size, batch = config.data.image_size, config.train.batch_size
    per_image = 4 * size * size * (1 + config.model["unet_channels"])  # float32: the image (1 channel at least)
    memory.check(batch * per_image, f"train.batch_size={batch:,} of {size}x{size} images", "lower train.batch_size")


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
    images = {os.path.realpath(p) for p in getattr(args, "image", None) or []}
    for path in paths:
        if os.path.realpath(path) in images:
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
