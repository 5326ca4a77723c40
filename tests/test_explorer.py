"""The explorer's engine without a browser: choosing, uploading, querying, the cache, the graph, downloads."""

from __future__ import annotations

import json

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
    with pytest.raises(ValueError, match="not an image this page can read"):
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
