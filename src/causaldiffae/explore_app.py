"""``causaldiffae explore RUN``: the counterfactual explorer as a local web page (Gradio).

The page is a thin layer over ``explorer.Explorer``: a gallery of test images (or an upload), one slider per
variable in label units (moving one is a do() on it; "reset" undoes it), the causal graph with the intervened
and affected nodes, the guidance / depth / steps knobs, the factual, reconstruction, counterfactual, difference
and (where the SCM is known) true counterfactual images, a traversal strip and downloads. "uncertainty" shows the
mean of K draws instead, with their spread map and the spread of the model's reading of each variable. Every
callback turns an error into a message in the page (the element ``#status``); the server keeps serving.

Each browser tab is a session of its own (``explorer.Sessions``, keyed by Gradio's session hash): one user's
image never shows in another's page. The user's files (downloads and, when Gradio is first imported through
:func:`gradio`, its copies of uploads and shown images) live in one private temporary folder, :func:`scratch`,
removed when the process ends: normally, on Ctrl-C, and on SIGTERM or SIGHUP while serving (``serve`` turns those
into the Ctrl-C path).
"""

import atexit
import contextlib
import functools
import itertools
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .explorer import MAX_SAMPLES, SPREAD_GAIN, Explorer, Result, Sessions

#: Slider resolution: a variable's range in this many steps.
SLIDER_STEPS = 200


def gradio() -> Any:
    """Gradio, imported on demand (an optional extra), with its usage analytics off: the page calls no one. Imported
    here first, its temporary files (copies of uploads and of shown images) go to :func:`scratch` (GRADIO_TEMP_DIR
    is read when Gradio is imported), so they end with the process, as the downloads do."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if "gradio" not in sys.modules:
        os.environ.setdefault("GRADIO_TEMP_DIR", str(scratch() / "gradio"))
    try:
        import gradio as gr
    except ImportError:
        raise ValueError("the explorer needs Gradio: pip install 'causaldiffae[explore]' (make install has it)") \
            from None
    return gr


@functools.cache
def scratch() -> Path:
    """This process's private temporary folder (mode 0700) for the users' files, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="causaldiffae-explore-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt while this holds, so that they stop the server the way Ctrl-C
    does (Gradio closes it; the clean-up at exit runs) instead of ending the process with no clean-up at all."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {name: signal.signal(getattr(signal, name), interrupt) for name in names}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def build_app(app: Explorer, title: str) -> Any:
    """The Gradio Blocks of the explorer page over ``app``: every callback works on its session's own view."""
    gr = gradio()
    # imported by gradio() above; Gradio passes the event and the request to parameters of these types
    from gradio import Request, SelectData

    graph, variables = app.graph, app.graph.variables
    ranges = {v: _slider_range(app, v) for v in variables}
    sessions = Sessions(app)
    downloads, serials = scratch() / "downloads", itertools.count()  # a serial per download: no two users share one
    # at most one DDIM step per training timestep of the default trajectory (a tiny test model has T = 100)
    model_knobs = app.model.knobs  # the model's own depth, weight and steps (knobs.json), else the global defaults
    default_steps = min(model_knobs.steps, round(model_knobs.depth * app.model.config.num_timesteps))
    with gr.Blocks(title=f"causaldiffae explorer: {title}", analytics_enabled=False) as page:
        gr.Markdown(f"# Counterfactual explorer: {title}\nPick a test image (or upload one), then move a slider: "
                    "each moved slider is a do() on its variable; its descendants follow the model's mechanisms.")
        status = gr.Markdown("", elem_id="status")
        intervened = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                gallery = gr.Gallery(value=app.gallery(), label="test images", columns=5, height=260,
                                     object_fit="contain", allow_preview=False, elem_id="gallery")
                upload = gr.File(label="or upload an image", type="filepath", elem_id="upload")
                k = app.model.config.num_classes
                cls = gr.Dropdown(choices=list(range(k)), value=0 if k else None, label="class condition",
                                  visible=bool(k), elem_id="class")
                graph_html = gr.HTML(app.graph_svg(), elem_id="graph")
            with gr.Column(scale=2):
                with gr.Row():
                    factual = gr.Image(label="factual", interactive=False, elem_id="factual")
                    recon = gr.Image(label="reconstruction", interactive=False, elem_id="reconstruction")
                    cf = gr.Image(label="counterfactual", interactive=False, elem_id="counterfactual")
                    diff = gr.Image(label="difference x4", interactive=False, elem_id="difference")
                    truth = gr.Image(label="true counterfactual", interactive=False, visible=app.scm is not None,
                                     elem_id="truth")
                    spread = gr.Image(label=f"spread x{SPREAD_GAIN:g} (std over the draws; with uncertainty)",
                                      interactive=False, elem_id="spread")
                timing = gr.Markdown("", elem_id="timing")
                sliders, resets = {}, {}
                for v in variables:
                    lo, hi = ranges[v]
                    with gr.Row():
                        units = f" ({graph[v].units})" if graph[v].units else ""
                        sliders[v] = gr.Slider(lo, hi, value=(lo + hi) / 2, step=(hi - lo) / SLIDER_STEPS,
                                               label=f"{v}{units}", elem_id=f"slider-{v}", scale=5)
                        resets[v] = gr.Button("reset", size="sm", elem_id=f"reset-{v}", scale=1)
                with gr.Row():
                    guidance = gr.Slider(0.0, 4.0, value=model_knobs.guidance, step=0.25, label="guidance weight",
                                         elem_id="guidance")
                    depth = gr.Slider(0.1, 1.0, value=model_knobs.depth, step=0.05, label="inversion depth",
                                      elem_id="depth")
                    # the range holds the default, or Gradio would refuse the page's own value (a knob of 3 steps)
                    steps = gr.Slider(min(5, default_steps), max(100, default_steps), value=default_steps, step=5,
                                      label="DDIM steps", elem_id="steps")
                with gr.Row():
                    uncertain = gr.Checkbox(False, label="uncertainty: the mean of K draws of u from the encoder's "
                                                         "posterior, and their spread", elem_id="uncertainty")
                    samples = gr.Slider(2, MAX_SAMPLES, value=8, step=1, label="draws K", elem_id="samples")
        with gr.Row():
            along = gr.Dropdown(choices=variables, value=variables[0], label="traverse", elem_id="traverse-variable")
            count = gr.Slider(2, 16, value=7, step=1, label="values", elem_id="traverse-count")
            first, last = (gr.Textbox("", label=end, placeholder="empty: the range's end", elem_id=f"traverse-{end}")
                           for end in ("from", "to"))
            traverse = gr.Button("traversal", elem_id="traverse")
            download = gr.Button("download grid and query", elem_id="download")
        strip = gr.Image(label="traversal", interactive=False, elem_id="strip")
        files = gr.File(label="downloads", file_count="multiple", interactive=False, elem_id="files")

        knobs = [guidance, depth, steps, uncertain, samples]
        shown = [factual, recon, cf, diff, truth, spread, graph_html, timing]
        values = [sliders[v] for v in variables]

        def show(result: Result) -> list:
            timing = (f"counterfactual in {result.seconds:.2f} s (decoding only after the first query of an image, "
                      "depth and steps)")
            if result.estimate_cf_std is not None:
                timing += (f"; mean of {result.settings['samples']:g} draws, spread {result.spread_pixels:.2f} grey "
                           "levels; std of the reading: " + ", ".join(f"{n} {v:.3g}" for n, v in
                                                                       result.estimate_cf_std.items()))
            return [result.factual, result.reconstruction, result.counterfactual, result.difference, result.truth,
                    result.spread, app.graph_svg(result), timing]

        def query(view: Explorer, names: list[str], w: float, d: float, s: float, u: bool, k: float,
                  *current: float) -> Result:
            """The session's query; the knobs go in as they came (the view names a bad one: NaN steps, say)."""
            chosen = dict(zip(variables, current, strict=True))
            return view.query({n: chosen[n] for n in names}, w, d, s, k if u else None)

        def fresh(view: Explorer, choice_fn: Callable[[], Any], w: float, d: float, s: float, u: bool,
                  k: float) -> list:
            """Choose an image, put every slider at the model's estimate, show the reconstruction."""
            choice = choice_fn()
            starts = [_start(choice.estimate[v], ranges[v]) for v in variables]
            shown_class = gr.update() if choice.classes is None else int(choice.classes[0])
            return ["", [], *show(view.query({}, w, d, s, k if u else None)), *starts, shown_class]

        def on_select(request: Request, w: float, d: float, s: float, u: bool, k: float, evt: SelectData) -> list:
            view = sessions.get(request.session_hash)
            return fresh(view, lambda: view.choose(int(evt.index)), w, d, s, u, k)

        def on_upload(request: Request, path: str | None, c: Any, w: float, d: float, s: float, u: bool,
                      k: float) -> list:
            if not path:
                return _unchanged(gr, 3 + len(shown) + len(values))
            view = sessions.get(request.session_hash)
            return fresh(view, lambda: view.upload(path, c), w, d, s, u, k)

        def on_class(request: Request, c: Any, names: list[str], w: float, d: float, s: float, u: bool, k: float,
                     *current: float) -> list:
            view = sessions.get(request.session_hash)
            if view.choice is None or c is None:
                return _unchanged(gr, 1 + len(shown))
            view.set_class(c)
            return ["", *show(query(view, names, w, d, s, u, k, *current))]

        def on_move(name: str) -> Callable[..., list]:
            def run(request: Request, names: list[str], w: float, d: float, s: float, u: bool, k: float,
                    *current: float) -> list:
                names = names if name in names else [*names, name]
                return ["", names, *show(query(sessions.get(request.session_hash), names, w, d, s, u, k, *current))]
            return run

        def on_reset(name: str) -> Callable[..., list]:
            def run(request: Request, names: list[str], w: float, d: float, s: float, u: bool, k: float,
                    *current: float) -> list:
                view = sessions.get(request.session_hash)
                if view.choice is None:
                    return _unchanged(gr, 3 + len(shown))
                names = [n for n in names if n != name]
                start = _start(view.choice.estimate[name], ranges[name])
                current = tuple(start if v == name else x for v, x in zip(variables, current, strict=True))
                return ["", names, *show(query(view, names, w, d, s, u, k, *current)), start]
            return run

        def on_knob(request: Request, names: list[str], w: float, d: float, s: float, u: bool, k: float,
                    *current: float) -> list:
            view = sessions.get(request.session_hash)
            if view.choice is None:
                return _unchanged(gr, 1 + len(shown))
            return ["", *show(query(view, names, w, d, s, u, k, *current))]

        def on_traverse(request: Request, name: str, n: float, low: str, high: str, w: float, d: float,
                        s: float) -> list:
            view = sessions.get(request.session_hash)
            image, points = view.traversal(name, n, w, d, s, _end(low, "from"), _end(high, "to"))
            return ["", gr.update(value=image, label=f"traversal of {name}: " + ", ".join(f"{p:.3g}" for p in points))]

        def on_download(request: Request, names: list[str], w: float, d: float, s: float, u: bool, k: float,
                        *current: float) -> list:
            view = sessions.get(request.session_hash)
            paths = view.save(query(view, names, w, d, s, u, k, *current), downloads / f"query-{next(serials)}")
            return ["", [str(p) for p in paths]]

        def on_leave(request: Request) -> None:
            sessions.end(request.session_hash)  # the tab was closed: its image and latents go

        # one queue for every event (concurrency_id): one model, one query at a time, whichever the user and event
        def listen(event: Any, fn: Callable[..., list], outputs: list, inputs: list, name: str) -> None:
            event(_safe(gr, fn, len(outputs)), inputs, outputs, api_name=name, concurrency_id="model")

        listen(gallery.select, on_select, [status, intervened, *shown, *values, cls], knobs, "select")
        listen(upload.upload, on_upload, [status, intervened, *shown, *values, cls], [upload, cls, *knobs], "upload")
        listen(cls.input, on_class, [status, *shown], [cls, intervened, *knobs, *values], "set_class")
        for v in variables:
            listen(sliders[v].release, on_move(v), [status, intervened, *shown], [intervened, *knobs, *values],
                   f"move_{v}")
            listen(resets[v].click, on_reset(v), [status, intervened, *shown, sliders[v]],
                   [intervened, *knobs, *values], f"reset_{v}")
        for knob, name in zip([*knobs[:3], samples], ("guidance", "depth", "steps", "samples"), strict=True):
            listen(knob.release, on_knob, [status, *shown], [intervened, *knobs, *values], name)
        listen(uncertain.input, on_knob, [status, *shown], [intervened, *knobs, *values], "uncertainty")
        # a traversal shows single counterfactuals: its knobs are the three, not the draws
        listen(traverse.click, on_traverse, [status, strip], [along, count, first, last, guidance, depth, steps],
               "traverse")
        listen(download.click, on_download, [status, files], [intervened, *knobs, *values], "download")
        page.unload(on_leave)
    return page


def _safe(gr: Any, fn: Callable[..., list], outputs: int) -> Callable[..., list]:
    """``fn`` with any error turned into a message in ``#status`` and every other output left as it was. No
    ``from __future__ import annotations`` here: Gradio reads ``fn``'s real annotations (``gr.SelectData``)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> list:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the page shows every failure as a message, never a trace
            message = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            return [f"**Could not do that:** {message}", *_unchanged(gr, outputs - 1)]
    return run


def _unchanged(gr: Any, n: int) -> list:
    return [gr.update() for _ in range(n)]


def _slider_range(app: Explorer, name: str) -> tuple[float, float]:
    """A variable's declared range, else the test labels' range, else three normalisation units around 0."""
    declared = app.graph[name].range
    if declared:
        return float(declared[0]), float(declared[1])
    if app.test is not None:
        column = app.test.labels[:, app.graph.index(name)].float()
        column = column[~column.isnan()]
        if len(column) and column.min() < column.max():
            return float(column.min()), float(column.max())
    var = app.graph[name]
    return float(var.denormalize(-3.0)), float(var.denormalize(3.0))


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(max(float(value), bounds[0]), bounds[1])


def _start(estimate: float, bounds: tuple[float, float]) -> float:
    """A slider's starting value: the model's estimate inside the slider's range, to 4 significant digits (the
    page shows the number; 57.86465835571289 claims a precision the estimate does not have)."""
    return _clamp(float(f"{float(estimate):.4g}"), bounds)


def _end(text: str | None, name: str) -> float | None:
    """A traversal end typed into its box: empty = the range's own end, else a finite number."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"traversal '{name}': {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"traversal '{name}': {text!r} is not a finite number")
    return value


def serve(app: Explorer, title: str, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Build the page and serve it on ``host:port`` until Ctrl-C, SIGTERM or SIGHUP; the users' files go when the
    process ends (:func:`scratch`). ``block=False`` returns the running page (for tests)."""
    with stopping_on_signals() if block else contextlib.nullcontext():
        page = build_app(app, title)
        page.queue(default_concurrency_limit=1)  # one model, one query at a time
        try:
            page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False,
                        inbrowser=False, quiet=not block)
        except KeyboardInterrupt:  # before Gradio began to wait for one (the server answers a moment earlier)
            page.close()
    return page
