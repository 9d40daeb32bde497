"""The comparison dashboard: in-process widget logic, and served by Voila (the README's command, with the
repository's voila.json) driven in headless Chromium: offline (no request leaves the machine, no console error),
an upload through the page, and kernels culled once their page is closed."""
from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from PIL import Image

from tests_support import REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
METHODS = ["grad-cam", "gradient"]


def test_dashboard_generates_segments_and_exports(tmp_path):
    from xaiimg.dashboard import ComparisonDashboard

    app = ComparisonDashboard(tmp_path / "runs")
    app.load_model()
    assert app.target.value == 285 or len(app.target.options) == 5
    app.methods.value = tuple(METHODS)
    app.generate()
    assert len(app.maps_box.children) == 2 and set(app.maps) == set(METHODS)
    kept = app.maps[METHODS[0]]
    app.percent.value = 10
    assert len(app.segments_box.children) == 2
    assert app.status.value.startswith("Generated") or "segment" not in app.status.value
    path = app.export("csv")
    assert path.parent == tmp_path / "exports"
    rows = list(csv.DictReader(path.open()))
    assert rows and rows[0]["kind"] == "explain" and rows[0]["model"] == "efficientnet_lite0"
    assert kept.shape == (1, 1, 224, 224)
    figures = app.export_figure()
    assert sorted(p.suffix for p in figures) == [".pdf", ".png"] and all(p.parent == tmp_path / "exports"
                                                                         for p in figures)
    assert Image.open(figures[1] if figures[1].suffix == ".png" else figures[0]).size[0] > 200


def test_dashboard_reports_errors_in_the_status_line(tmp_path):
    from xaiimg.dashboard import CHECKPOINT, ComparisonDashboard

    app = ComparisonDashboard(tmp_path / "runs")
    app.model_name.value = CHECKPOINT
    app.arch.value = "resnet18"
    app.checkpoint.value = str(tmp_path / "missing.pth")
    app._guard(app.load_model)
    assert "Error" in app.status.value and "missing.pth" in app.status.value
    assert not (tmp_path / "runs").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _kernels(server: subprocess.Popen) -> list[psutil.Process]:
    """The kernel processes the Voila server has started and not yet shut down."""
    return [child for child in psutil.Process(server.pid).children(recursive=True)
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE
            and "ipykernel_launcher" in " ".join(child.cmdline())]


@pytest.fixture
def voila_server(tmp_path):
    """The README's command from the repository root (so voila.json applies), with the culling interval and
    timeout shortened so the test sees a closed page's kernel go."""
    port = _free_port()
    env = dict(os.environ, XAIIMG_RUNS=str(tmp_path / "runs"))
    voila = Path(sys.executable).with_name("voila")
    process = subprocess.Popen(
        [str(voila), "notebooks/07_comparison_dashboard.ipynb", "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1", "--show_tracebacks=True", "--MappingKernelManager.cull_idle_timeout=3",
         "--MappingKernelManager.cull_interval=1"], cwd=REPO_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "api", timeout=1)
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(process.stdout.read().decode())
                time.sleep(0.5)
        yield url, tmp_path / "runs", process
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup_env.sh installs it)")
def test_voila_dashboard_in_headless_chromium(voila_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, runs, server = voila_server
    upload = tmp_path / "<img src=x onerror=console.error(1)>.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(upload)
    console_errors, outside_requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
            page.on("pageerror", lambda error: console_errors.append(str(error)))
            page.on("request", lambda request: request.url.startswith(("http://127.0.0.1", "ws://127.0.0.1",
                                                                       "data:", "blob:"))
                    or outside_requests.append(request.url))
            page.goto(url, timeout=120_000)
            expect(page.get_by_text("xaiimg: saliency comparison")).to_be_visible(timeout=120_000)
            page.get_by_role("button", name="Load model").click()
            expect(page.get_by_text("Image ready")).to_be_visible(timeout=120_000)
            page.locator("select").filter(has_text="chelsea").select_option("coffee")
            expect(page.get_by_text("predicted: espresso")).to_be_visible(timeout=60_000)
            page.locator("select[multiple]").select_option(METHODS)
            page.get_by_role("button", name="Generate maps").click()
            expect(page.get_by_text("Generated 2 map(s)")).to_be_visible(timeout=120_000)
            for method in METHODS:
                expect(page.get_by_text(method, exact=True).first).to_be_visible()
                expect(page.get_by_text(f"{method}: top 20%")).to_be_visible()
            handle = page.locator(".noUi-handle").first
            handle.focus()
            for _ in range(5):
                handle.press("ArrowRight")
            expect(page.get_by_text(f"{METHODS[0]}: top 25%")).to_be_visible(timeout=60_000)
            with page.expect_file_chooser() as chooser:
                page.locator("button.widget-upload").click()
            chooser.value.set_files(str(upload))
            expect(page.get_by_text(re.compile(r"Image ready \(upload:[0-9a-f]{64}\.png"))).to_be_visible(
                timeout=60_000)
            page.get_by_role("button", name="Generate maps").click()
            expect(page.get_by_text("Generated 2 map(s)")).to_be_visible(timeout=120_000)
            expect(page.get_by_text("<img src=x onerror=console.error(1)>.png").first).to_be_visible()
            page.get_by_role("button", name="Export CSV").click()
            expect(page.get_by_text(re.compile(r"^Exported to /"))).to_be_visible(timeout=60_000)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert len(_kernels(server)) == 1
            page.close()
            deadline = time.monotonic() + 60
            while _kernels(server) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _kernels(server) == [], "the closed page's kernel was not culled"
        finally:
            browser.close()
    assert console_errors == [] and outside_requests == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    rows = list(csv.DictReader((tmp_path / "exports" / "results.csv").open()))
    assert [row["data"] for row in rows] == [
        "sample:coffee", f"upload:{next((runs / 'uploads').iterdir()).name} (<img src=x onerror=console.error(1)>.png)"]
    assert all(row["method"] == ", ".join(METHODS) for row in rows)


def test_voila_json_culls_closed_pages_and_serves_the_offline_template():
    """What `voila notebooks/07_comparison_dashboard.ipynb` reads from the repository root (the browser test above
    shortens the same culling to seconds)."""
    import json

    config = json.loads((REPO_ROOT / "voila.json").read_text())
    culling = config["MappingKernelManager"]
    assert culling["cull_idle_timeout"] > 0 and culling["cull_interval"] > 0 and culling["cull_connected"] is False
    assert config["VoilaConfiguration"]["template"] == "xaiimg"
    template = REPO_ROOT / "share" / "voila" / "xaiimg"
    assert json.loads((template / "conf.json").read_text())["base_template"] == "lab"
    linked = Path(sys.prefix) / "share" / "jupyter" / "voila" / "templates" / "xaiimg"
    assert linked.resolve() == template.resolve(), "scripts/setup_env.sh links the template into the venv"
