"""The explorer page end to end in a real browser: Debian's Chromium driven by Playwright for Python.

The app is served in this process on a free local port with a tiny model; the test picks a test image, moves
a slider, waits for the counterfactual to change, checks the graph marks the intervened node and its
descendants, uploads a broken file and sees the message, then checks the page still answers. `.ci/run`
installs Chromium when it is missing, so in CI this runs rather than skips.
"""

from __future__ import annotations

import shutil
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

from causaldiffae import CausalDiffAE, ModelConfig
from causaldiffae.data import load_dataset
from causaldiffae.explore_app import serve
from causaldiffae.explorer import Explorer
from conftest import TINY, TINY_SIZE

gradio = pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)

#: Chromium in this sandbox: no sandboxing as root, and no background traffic to a closed network.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(tiny_dataset):
    data = load_dataset(tiny_dataset, TINY_SIZE)
    torch.manual_seed(0)
    model = CausalDiffAE(ModelConfig(graph=data.graph.to_dict(), image_size=TINY_SIZE, channels=3, **TINY))
    with torch.no_grad():  # a fresh UNet head predicts eps = 0 whatever the condition: give it a response
        for p in model.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    port = _free_port()
    page = serve(Explorer(model, data, "tiny"), "tiny", port=port, block=False)
    yield f"http://127.0.0.1:{port}"
    page.close()


def _src(page, element: str) -> str | None:
    image = page.locator(f"#{element} img")
    return image.first.get_attribute("src") if image.count() else None


def _chosen(p, url: str):
    """A headless Chromium on the page with the gallery's first image chosen: (browser, page)."""
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.locator("#gallery button.thumbnail-item").first.click()
    page.wait_for_function("document.querySelector('#counterfactual img') !== null")
    return browser, page


def test_slider_graph_and_broken_upload_in_a_real_browser(url, tmp_path, capsys):
    with sync_api.sync_playwright() as p:
        browser, page = _chosen(p, url)
        before = _src(page, "counterfactual")
        assert page.locator('#graph g.node.other[data-name="angle"]').count() == 1

        start = time.perf_counter()
        number = page.locator("#slider-angle input[type=number]")
        number.fill("30")
        number.press("Tab")  # blur: Gradio's slider fires its release event
        page.wait_for_function("(old) => { const i = document.querySelector('#counterfactual img'); "
                               "return i !== null && i.getAttribute('src') !== old; }", arg=before)
        latency = time.perf_counter() - start
        page.wait_for_selector('#graph g.node.intervened[data-name="angle"]')
        assert page.locator('#graph g.node.affected[data-name="shadow_length"]').count() == 1
        assert page.locator('#graph g.node.affected[data-name="shadow_position"]').count() == 1
        assert page.locator('#graph g.node.other[data-name="light"]').count() == 1
        assert "30 </text>" not in page.locator("#graph").inner_html()  # values are formatted, not raw
        assert "→ 30</text>" in page.locator("#graph").inner_html()  # the intervened node reads its value

        broken = tmp_path / "broken.png"
        broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image at all")
        page.locator("#upload input[type=file]").set_input_files(str(broken))
        page.wait_for_function("document.querySelector('#status').innerText.includes('Could not do that')")
        assert "the upload is not an image" in page.locator("#status").inner_text()
        assert "Traceback" not in page.content()

        page.locator("#reset-angle").click()  # the server still serves: undo the do() and see the graph follow
        page.wait_for_selector('#graph g.node.other[data-name="angle"]')

        # a traversal of the first variable (angle) between two typed ends: its strip names the values
        page.locator("#traverse-from textarea, #traverse-from input").first.fill("-20")
        page.locator("#traverse-to textarea, #traverse-to input").first.fill("20")
        page.locator("#traverse").click()
        page.wait_for_selector("#strip img")
        assert "traversal of angle: -20, " in page.locator("#strip").inner_text()
        assert ", 20" in page.locator("#strip").inner_text()
        browser.close()
    with capsys.disabled():
        print(f"\nexplorer: counterfactual shown {latency:.2f} s after the slider move (tiny model, 16 px)")


def test_two_sessions_at_once_keep_their_own_image(url, tiny_dataset, tmp_path):
    """Two users at once (two browser contexts: two sessions): B's upload does not reach A's page; A's next slider
    move shows A's image and A's download is of A's image."""
    first = load_dataset(tiny_dataset, TINY_SIZE).split("test").files[0]  # the gallery's first image
    mine = tmp_path / "mine.png"
    Image.fromarray(np.full((TINY_SIZE, TINY_SIZE, 3), (250, 30, 30), np.uint8)).save(mine)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        a, b = (browser.new_context(viewport={"width": 1400, "height": 1100}).new_page() for _ in range(2))
        for page in (a, b):
            page.set_default_timeout(60_000)
            page.goto(url)
        a.locator("#gallery button.thumbnail-item").first.click()
        a.wait_for_function("document.querySelector('#counterfactual img') !== null")
        a_factual, before = _src(a, "factual"), _src(a, "counterfactual")

        b.locator("#upload input[type=file]").set_input_files(str(mine))
        b.wait_for_function("document.querySelector('#factual img') !== null")
        b_factual = _src(b, "factual")
        assert b_factual != a_factual

        number = a.locator("#slider-angle input[type=number]")
        number.fill("30")
        number.press("Tab")
        a.wait_for_function("(old) => { const i = document.querySelector('#counterfactual img'); "
                            "return i !== null && i.getAttribute('src') !== old; }", arg=before)
        assert _src(a, "factual") == a_factual and "Could not" not in a.locator("#status").inner_text()
        a.locator("#download").click()
        a.wait_for_selector("#files a[href*='query.json']")
        query = a.request.get(a.locator("#files a[href*='query.json']").first.get_attribute("href")).json()
        assert query["image"] == first and query["do"] == {"angle": 30.0}
        assert _src(b, "factual") == b_factual
        browser.close()


def test_uncertainty_on_request_shows_the_spread_map(url):
    """Ticking "uncertainty" re-answers the query as the mean of K draws: the spread map appears and the timing
    line names the draws and the reading's spread; unticked, the map goes."""
    with sync_api.sync_playwright() as p:
        browser, page = _chosen(p, url)
        assert _src(page, "spread") is None
        page.locator("#uncertainty input[type=checkbox]").check()
        page.wait_for_function("document.querySelector('#spread img') !== null")
        timing = page.locator("#timing").inner_text()
        assert "mean of 8 draws" in timing and "std of the reading: angle" in timing
        page.locator("#uncertainty input[type=checkbox]").uncheck()
        page.wait_for_function("document.querySelector('#spread img') === null")
        assert "Could not" not in page.locator("#status").inner_text()
        browser.close()
