"""Latency of the explorer page with a shipped model, measured in a real browser, and the README's screenshot.

    python benchmarks/explorer_latency.py [pendulum|morphomnist] [--moves 5] [--screenshot docs/images/explorer.png]

Serves ``causaldiffae explore MODEL`` in this process at the page's defaults (the model's knobs: guidance,
depth, DDIM steps), opens it in Debian's Chromium (Playwright), picks the first test image (its abduction is
computed and cached then), and moves the first variable's slider ``--moves`` times; each latency is the time
from the slider's release to the new counterfactual on the page. Prints them and writes
``benchmarks/results/explorer_latency_MODEL.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from playwright.sync_api import sync_playwright

from causaldiffae import CausalDiffAE
from causaldiffae.demo import SHIPPED_MODELS
from causaldiffae.explore_app import serve
from causaldiffae.explorer import Explorer
from causaldiffae.run_data import run_dataset

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="pendulum", choices=sorted(SHIPPED_MODELS))
    parser.add_argument("--moves", type=int, default=5)
    parser.add_argument("--screenshot", help="PNG of the page after the last move")
    args = parser.parse_args()

    folder = SHIPPED_MODELS[args.model]
    model = CausalDiffAE.from_pretrained(folder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page_app = serve(Explorer(model, run_dataset(folder), args.model), args.model, port=port, block=False)
    variable = model.graph.variables[0]
    low, high = model.graph[variable].range
    latencies, first = [], None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1250})
        page.set_default_timeout(120_000)
        page.goto(f"http://127.0.0.1:{port}")
        start = time.perf_counter()
        page.locator("#gallery button.thumbnail-item").first.click()
        page.wait_for_function("document.querySelector('#counterfactual img') !== null")
        first = time.perf_counter() - start
        for value in np.linspace(low, high, args.moves + 2)[1:-1]:
            before = page.locator("#counterfactual img").first.get_attribute("src")
            number = page.locator(f"#slider-{variable} input[type=number]")
            number.fill(f"{value:.2f}")
            start = time.perf_counter()
            number.press("Tab")  # blur releases the slider
            page.wait_for_function("(old) => { const i = document.querySelector('#counterfactual img'); "
                                   "return i !== null && i.getAttribute('src') !== old; }", arg=before)
            latencies.append(time.perf_counter() - start)
        if args.screenshot:
            page.screenshot(path=args.screenshot, full_page=True)
        browser.close()
    page_app.close()
    result = {"model": args.model, "variable": variable, "moves": args.moves, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(),
              "first_image_seconds": round(first, 2), "latency_seconds": [round(t, 3) for t in latencies],
              "median_latency_seconds": round(statistics.median(latencies), 3)}
    print(json.dumps(result, indent=1))
    out = Path(f"benchmarks/results/explorer_latency_{args.model}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
