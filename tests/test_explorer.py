"""The explorer's engine without a browser: choosing, uploading, querying, the cache, the graph, downloads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from causaldiffae import CausalDiffAE, ModelConfig, explorer
from causaldiffae.data import load_dataset, pendulum
from causaldiffae.explorer import DISPLAY_SIZE, Explorer
from causaldiffae.knobs import Knobs
from conftest import TINY, TINY_SIZE, predicting_no_noise

KNOBS = dict(guidance=1.5, depth=0.5, steps=4)


@pytest.fixture()
def app(tiny_dataset) -> Explorer:
    """A model that predicts eps = 0: DDIM inversion and decoding are then exact inverses whatever the condition,
    so every decoded image is the chosen image itself."""
    data = load_dataset(tiny_dataset, TINY_SIZE)
    torch.manual_seed(0)
    model = predicting_no_noise(CausalDiffAE(ModelConfig(graph=data.graph.to_dict(), image_size=TINY_SIZE,
                                                         channels=3, **TINY)))
    return Explorer(model, data)


def test_gallery_and_choice_show_the_models_estimate(app):
    gallery = app.gallery(5)
    assert len(gallery) == 5 and gallery[0][0].shape == (DISPLAY_SIZE, DISPLAY_SIZE, 3)
    assert gallery[0][1] == app.test.files[0] and set(app.test.splits) == {"test"}
    choice = app.choose(2)
    assert tuple(choice.estimate) == pendulum.VARIABLES and choice.row == 2
    assert choice.factual == pytest.approx(dict(zip(pendulum.VARIABLES, app.test.labels[2].tolist(), strict=True)))


def test_query_marks_intervened_and_affected_and_reads_the_intervened_value(app):
    app.choose(0)
    result = app.query({"angle": 12.5}, **KNOBS)
    assert result.intervened == ["angle"] and result.affected == ["shadow_length", "shadow_position"]
    assert result.estimate_cf["angle"] == pytest.approx(12.5, abs=1e-4)  # the intervened block reads back its value
    assert result.estimate_cf["light"] == pytest.approx(result.estimate["light"])  # a non-descendant stays
    assert np.abs(result.counterfactual.astype(int) - result.factual.astype(int)).max() <= 1  # eps = 0: exact
    assert result.difference.max() <= 3 * 255 * explorer.DIFF_GAIN / 255  # at most a rounding step, amplified
    labels = dict(zip(pendulum.VARIABLES, app.test.labels[0].tolist(), strict=True))
    truth, _ = pendulum.true_counterfactual(labels, {"angle": 12.5}, TINY_SIZE)
    assert np.array_equal(result.truth, explorer._display(truth))
    svg = app.graph_svg(result)
    assert svg.startswith("<svg") and svg.count('<g class="node') == 4 and svg.count('class="edge"') == 4
    assert '<g class="node intervened" data-name="angle">' in svg and "12.5</text>" in svg
    assert '<g class="node affected" data-name="shadow_length">' in svg
    assert '<g class="node other" data-name="light">' in svg
    assert [explorer._node_state(v, result) for v in pendulum.VARIABLES] == [
        "intervened", "other", "affected", "affected"]
    empty = app.query({}, **KNOBS)
    assert empty.intervened == [] and empty.truth is None and empty.difference.max() == 0


def test_a_slider_move_only_decodes(app, monkeypatch):
    """The abduction (inversion and reconstruction) runs once per image, depth and steps."""
    calls = []
    original = explorer.abduct_noise
    monkeypatch.setattr(explorer, "abduct_noise", lambda *a, **k: calls.append(k["steps"]) or original(*a, **k))
    app.choose(1)
    for value in (0.0, 10.0, 20.0):
        app.query({"angle": value}, **KNOBS)
    assert calls == [4]
    app.query({"angle": 5.0}, guidance=1.5, depth=0.5, steps=5)
    app.choose(3)
    app.query({"light": 100.0}, **KNOBS)
    assert calls == [4, 5, 4]


@pytest.mark.parametrize("do, message", [({"angle": 99.0}, r"angle = 99 lies outside its range \[-36, 38.7\]"),
                                         ({"height": 1.0}, "unknown variable 'height'"),
                                         ({"angle": float("nan")}, "not a finite number"),
                                         ({"angle": "ten"}, "'ten' is not a number")])
def test_bad_values_are_named(app, do, message):
    app.choose(0)
    with pytest.raises(ValueError, match=message):
        app.query(do, **KNOBS)


def test_uncertainty_shows_the_mean_of_the_draws_and_their_spread(app, monkeypatch, tmp_path):
    """eps = 0: every draw decodes to the chosen image, so the mean is the image and the spread map is black; the
    readings still spread (u drawn from the posterior), but not the intervened variable's. The draws are abducted
    once per image, depth, steps and K, and the same in every session (seeded)."""
    calls = []
    original = explorer.abduct_samples
    monkeypatch.setattr(explorer, "abduct_samples", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    app.choose(0)
    result = app.query({"angle": 12.5}, **KNOBS, samples=4)
    assert np.abs(result.counterfactual.astype(int) - result.factual.astype(int)).max() <= 1
    assert result.spread is not None and result.spread.shape == result.factual.shape and result.spread.max() == 0
    assert result.spread_pixels == pytest.approx(0, abs=1e-3) and result.settings["samples"] == 4
    assert result.estimate_cf_std is not None and result.estimate_cf_std["angle"] == pytest.approx(0, abs=1e-4)
    assert result.estimate_cf_std["light"] > 0  # a root the do() leaves: its reading follows each draw of u
    assert result.estimate_cf["angle"] == pytest.approx(12.5, abs=1e-4)
    again = app.query({"angle": 20.0}, **KNOBS, samples=4)
    assert calls == [4] and again.estimate_cf_std is not None  # the same draws: a non-descendant reads the same
    assert again.estimate_cf_std["light"] == result.estimate_cf_std["light"]
    other = app.session()
    other.choose(0)
    assert other.query({"angle": 12.5}, **KNOBS, samples=4).estimate_cf_std == result.estimate_cf_std
    assert calls == [4, 4]  # another image key (the session chose it again), the same seeded draws
    plain = app.query({"angle": 12.5}, **KNOBS)
    assert plain.spread is None and plain.estimate_cf_std is None and "samples" not in plain.settings
    grid, query = app.save(result, tmp_path / "download")
    assert json.loads(query.read_text())["estimate_counterfactual_std"]["angle"] == pytest.approx(0, abs=1e-4)
    for bad, message in ((0, "samples must lie in 1..32"), (33, "samples must lie in 1..32"),
                         (2.5, "not a whole number"), (float("nan"), "not a finite number")):
        with pytest.raises(ValueError, match=message):
            app.query({"angle": 1.0}, **KNOBS, samples=bad)


def test_nothing_chosen_yet(app):
    with pytest.raises(ValueError, match="choose a test image or upload one first"):
        app.query({}, **KNOBS)


def test_uploads_are_resized_or_refused(app, tmp_path):
    good = tmp_path / "mine.png"
    Image.fromarray(pendulum.render(10.0, 100.0, 64)).save(good)
    choice = app.upload(good)
    assert choice.source == "mine.png" and choice.x.shape == (1, 3, TINY_SIZE, TINY_SIZE) and choice.row is None
    assert app.query({"angle": 3.0}, **KNOBS).truth is None  # no SCM row behind an upload
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"the upload is not an image \(Pillow cannot identify its format\)"):
        app.upload(broken)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (40, 20)).save(wide)
    with pytest.raises(ValueError, match="40x20: the model takes square images"):
        app.upload(wide)
    assert app.choice is choice  # a refused upload keeps the chosen image


def test_traversal_strip_and_downloads(app, tmp_path):
    app.choose(0)
    strip, values = app.traversal("light", 3, **KNOBS)
    lo, hi = pendulum.GRAPH["variables"][1]["range"]
    assert values == pytest.approx([lo, (lo + hi) / 2, hi])
    assert strip.shape == (DISPLAY_SIZE // 2, 3 * DISPLAY_SIZE // 2, 3)
    with pytest.raises(ValueError, match="2 to 16 values"):
        app.traversal("light", 40, **KNOBS)
    result = app.query({"light": 120.0}, **KNOBS)
    png, query = app.save(result, tmp_path / "download")
    assert png.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(query.read_text())
    assert saved["do"] == {"light": 120.0} and saved["image"] == app.test.files[0] and saved["steps"] == 4
    assert saved["affected"] == ["shadow_length", "shadow_position"]


def test_page_helpers_turn_errors_into_messages_and_pick_slider_ranges(app):
    """Every callback of the page answers a failure with a message for #status and leaves the rest alone."""
    gr = pytest.importorskip("gradio")
    from causaldiffae import explore_app

    def fails(value: float) -> list:
        return app.query({"angle": value}, **KNOBS)

    out = explore_app._safe(gr, fails, 3)(99.0)
    assert out[0] == "**Could not do that:** choose a test image or upload one first" and len(out) == 3
    assert explore_app._slider_range(app, "angle") == (-36.0, 38.7)  # the graph's declared range
    assert explore_app._clamp(50.0, (-36.0, 38.7)) == 38.7
    assert explore_app._start(57.86465835571289, (54.0, 132.3)) == 57.86  # 4 significant digits, in range
    assert explore_app._start(-40.123, (-36.0, 38.7)) == -36.0
    assert explore_app._end("", "from") is None and explore_app._end("  ", "to") is None  # the range's end
    assert explore_app._end(" -12.5 ", "from") == -12.5
    for bad in ("abc", "nan", "inf"):
        with pytest.raises(ValueError, match=f"traversal 'to': '{bad}' is not a"):
            explore_app._end(bad, "to")
    page = explore_app.build_app(app, "tiny")
    labels = {getattr(b, "label", None) for b in page.blocks.values()}
    assert {"angle (degrees)", "guidance weight", "inversion depth", "DDIM steps", "traversal"} <= labels


def test_queries_and_the_page_default_to_the_models_own_steps(app, monkeypatch):
    """A model whose knobs say 3 steps: a query naming none abducts at 3 and records 3; the page's steps slider
    starts at the knob (capped at one step per timestep of the trajectory: depth 0.5 of T = 100 allows 50)."""
    calls = []
    original = explorer.abduct_noise
    monkeypatch.setattr(explorer, "abduct_noise", lambda *a, **k: calls.append(k["steps"]) or original(*a, **k))
    app.model.knobs = Knobs(0.5, 1.0, 3)
    app.choose(0)
    assert app.query({"angle": 5.0}).settings["steps"] == 3 and calls == [3]
    assert app.query({"angle": 5.0}, steps=4).settings["steps"] == 4 and calls == [3, 4]
    pytest.importorskip("gradio")
    from causaldiffae import explore_app

    for knob, shown in ((3, 3), (20, 20), (80, 50)):
        app.model.knobs = Knobs(0.5, 1.0, knob)
        page = explore_app.build_app(app, "tiny")
        slider = next(b for b in page.blocks.values() if getattr(b, "label", None) == "DDIM steps")
        assert slider.value == shown and slider.minimum <= shown <= slider.maximum, knob


def test_two_sessions_keep_their_own_image_and_share_a_bounded_cache(app, tmp_path, monkeypatch):
    """User B's upload never shows in user A's page: A's next query and download are of A's image. The abduction
    cache is one for all sessions, bounded, and sessions beyond the bound are forgotten oldest first."""
    calls = []
    original = explorer.abduct_noise
    monkeypatch.setattr(explorer, "abduct_noise", lambda *a, **k: calls.append(k["steps"]) or original(*a, **k))
    sessions = explorer.Sessions(app, size=2)
    a, b = sessions.get("A"), sessions.get("B")
    a.choose(0)
    first = a.query({"angle": 5.0}, **KNOBS)
    mine = tmp_path / "mine.png"
    Image.fromarray(np.full((TINY_SIZE, TINY_SIZE, 3), 200, np.uint8)).save(mine)
    b.upload(mine)
    again = sessions.get("A").query({"angle": 10.0}, **KNOBS)
    assert np.array_equal(again.factual, first.factual) and again.source == app.test.files[0]
    _, saved = a.save(again, tmp_path / "a")
    assert json.loads(saved.read_text())["image"] == app.test.files[0]
    assert sessions.get("B").query({}, **KNOBS).factual.min() == 200
    assert calls == [4, 4]  # A's second query was served from the cache
    assert a._cache is b._cache is app._cache and app._cache.size == explorer.CACHE_SIZE
    assert app.choice is None  # the explorer itself is no one's session

    sessions.get("C").choose(1)  # a third session: A, the least recently used, is forgotten
    assert "A" not in sessions and "B" in sessions and len(sessions) == 2
    with pytest.raises(ValueError, match="choose a test image or upload one first"):
        sessions.get("A").query({}, **KNOBS)
    assert sessions.get(None) is not sessions.get(None)  # a request without a session key shares nothing
    sessions.end("B")
    assert "B" not in sessions


def test_the_abduction_cache_is_bounded_across_sessions(app, monkeypatch):
    calls = []
    original = explorer.abduct_noise
    monkeypatch.setattr(explorer, "abduct_noise", lambda *a, **k: calls.append(k["steps"]) or original(*a, **k))
    app._cache = explorer.Recent(2)
    a, b = app.session(), app.session()
    a.choose(0)
    a.query({}, **KNOBS)
    b.choose(1)
    b.query({}, guidance=1.5, depth=0.5, steps=3)
    b.query({}, guidance=1.5, depth=0.5, steps=2)  # the third abduction: A's (the oldest) goes
    assert len(app._cache) == 2 and calls == [4, 3, 2]
    a.query({}, **KNOBS)
    assert calls == [4, 3, 2, 4]


@pytest.mark.parametrize("knob, value, message", [
    ("steps", float("nan"), "steps = nan is not a finite number"),
    ("steps", 2.5, "steps = 2.5 is not a whole number"),
    ("steps", "many", "steps = 'many' is not a number"),
    ("depth", float("inf"), "depth = inf is not a finite number"),
    ("guidance", float("nan"), "guidance = nan is not a finite number"),
])
def test_a_bad_knob_is_named(app, knob, value, message):
    """The page's HTTP API passes any JSON number on, NaN included: the message names the knob."""
    app.choose(0)
    with pytest.raises(ValueError, match=message):
        app.query({}, **{**KNOBS, knob: value})
    with pytest.raises(ValueError, match=message):
        app.traversal("angle", 3, **{**KNOBS, knob: value})
    with pytest.raises(ValueError, match="values = nan is not a finite number"):
        app.traversal("angle", float("nan"), **KNOBS)


def test_nan_steps_through_the_http_api_get_a_message(app):
    """A client of the page's HTTP API sends NaN steps (a JSON NaN, as Python's json writes it): the page answers
    with a message naming the knob, not Python's "cannot convert float NaN to integer"."""
    pytest.importorskip("gradio")
    from causaldiffae.explore_app import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = serve(app, "tiny", port=port, block=False)
    try:
        url = f"http://127.0.0.1:{port}/gradio_api/call/traverse"
        body = json.dumps({"data": ["angle", 3, "", "", 1.0, 0.5, float("nan")]}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            event = json.loads(answer.read())["event_id"]
        with urllib.request.urlopen(f"{url}/{event}", timeout=60) as answer:
            stream = answer.read().decode()
    finally:
        page.close()
    data = [line.removeprefix("data: ") for line in stream.splitlines() if line.startswith("data: ")]
    assert json.loads(data[-1])[0] == "**Could not do that:** steps = nan is not a finite number", stream


def test_uploads_are_read_as_the_dataset_loaders_read_images(app, tmp_path):
    """A 16-bit grey PNG is scaled to 8 bits (0, 64, 128, 255), not clipped to black and white; CMYK, palette and
    alpha uploads come out as the dataset loader's ``read_image`` reads them."""
    from causaldiffae.data.image_folder import read_image

    levels = np.array([0, 16384, 32768, 65535], dtype=np.uint16)
    sixteen = tmp_path / "deep.png"
    Image.fromarray(np.tile(np.repeat(levels, TINY_SIZE // 4), (TINY_SIZE, 1))).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    pixels = (app.upload(sixteen).x[0] * 255).round().to(torch.uint8)
    assert pixels.shape == (3, TINY_SIZE, TINY_SIZE)
    assert pixels[:, 0, :: TINY_SIZE // 4].tolist() == [[0, 64, 128, 255]] * 3
    rgb = np.random.default_rng(0).integers(0, 256, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    for mode in ("CMYK", "P", "RGBA", "LA"):
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.fromarray(rgb).convert(mode).save(path)
        expected = np.asarray(read_image(path).convert("RGB"), dtype=np.float32) / 255
        got = app.upload(path).x[0].permute(1, 2, 0).numpy()
        assert np.array_equal(got, expected), mode


def test_sigterm_to_the_explorer_removes_the_users_files(tmp_path):
    """`causaldiffae explore` stopped by SIGTERM (a service manager, `kill`) runs the clean-up that Ctrl-C runs:
    its private temporary folder (downloads, Gradio's copies of uploads) is gone and it exits cleanly."""
    pytest.importorskip("gradio")
    torch.manual_seed(0)
    CausalDiffAE(ModelConfig(graph=pendulum.GRAPH, image_size=TINY_SIZE, channels=3, **TINY)).save_pretrained(
        tmp_path / "model")
    temp = tmp_path / "temp"
    temp.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    proc = subprocess.Popen([sys.executable, "-m", "causaldiffae.cli", "explore", str(tmp_path / "model"),
                             "--port", str(port)], env={**env, "TMPDIR": str(temp)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the explorer did not start serving"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
                break
            except OSError:
                time.sleep(0.5)
        (folder,) = temp.glob("causaldiffae-explore-*")
        (folder / "downloads" / "query-0").mkdir(parents=True)
        (folder / "downloads" / "query-0" / "counterfactual.png").write_bytes(b"the user's image")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and list(temp.iterdir()) == []
