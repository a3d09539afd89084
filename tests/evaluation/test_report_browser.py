"""report.html opened in headless Chromium: no console errors, no requests, no dialogs.

Needs Debian's Chromium (/usr/bin/chromium, or $CHROMIUM_PATH) and the
``playwright`` Python package; skipped with a reason otherwise. The
screenshot is saved in the test's tmp dir (and copied to
$EVAL_SCREENSHOT_DIR when set, e.g. for CI artifacts).
"""

import os
import shutil
from pathlib import Path

import pytest

from instructgpt.evaluation import write_report

from . import make_results

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    for cand in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def test_report_in_headless_chromium(tmp_path):
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="playwright not installed (pip install playwright==1.65.2)")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium not found at /usr/bin/chromium (apt-get install -y chromium)")
    _, html_path = write_report(make_results(), tmp_path)
    errors, requests, dialogs = [], [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html_path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.complete, e.naturalWidth])")
            title = page.title()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert dialogs == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert len(images) >= 7 and all(done and width > 0 for done, width in images), images
    assert "evaluation report" in title
    assert shot.stat().st_size > 10_000
    if os.environ.get("EVAL_SCREENSHOT_DIR"):
        out = Path(os.environ["EVAL_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "report.png")
