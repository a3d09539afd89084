"""Browser: a labeler ranks 4 responses in Debian's headless Chromium, driven by Playwright.

Skipped with the reason when Playwright or /usr/bin/chromium is missing (never
runs ``playwright install``; the ``browser`` fixture is in conftest.py).
Screenshots go to tests/labeling/artifacts/. test_rank_page.py has the K=9 tests.
"""

from __future__ import annotations

import pytest

from instructgpt import data
from instructgpt.labeling.export import export_dir
from instructgpt.labeling.store import open_store
from instructgpt.labeling.tasks import import_file

from .conftest import ARTIFACTS
from .helpers import PASSWORD, add_user, write_rank_tasks

pytestmark = pytest.mark.timeout(180)  # bounded even if a server hangs


@pytest.fixture
def site(sqlite_url, tmp_path, live_server):
    store = open_store(sqlite_url)
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 1))
    add_user(store, "ann")
    add_user(store, "root", role="admin")
    server = live_server(sqlite_url, insecure_cookies=False)  # Secure cookies, as in production
    yield store, server
    store.dispose()


def log_in(browser, base_url: str, username: str, viewport=(1280, 2600)):
    """A fresh browser context logged in as ``username``; returns (context, page, console errors)."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base_url + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    return context, page, errors


def open_task(browser, base_url: str):
    """Log in as ann, get a task; returns (context, page, console errors)."""
    context, page, errors = log_in(browser, base_url, "ann")
    page.click("text=more tasks")
    page.wait_for_selector("#ranklist")
    return context, page, errors


def order(page) -> list[int]:
    """Original indices of the responses, top to bottom, as shown now."""
    texts = page.locator("#ranklist li.card .response-text").all_inner_texts()
    return [int(t.split()[1]) for t in texts]  # "Sample 2 for p0" -> 2


def card(page, original: int):
    return page.locator("#ranklist li.card", has_text=f"Sample {original} for p0")


def group_of(page, original: int):
    return page.locator("#ranklist > li.group", has=page.locator("li.card", has_text=f"Sample {original} for p0"))


def ranks(page) -> list[str]:
    """Each card's rank, top to bottom: "2" alone, "2=" when tied (from the boxes the page shows)."""
    out = []
    for group in page.locator("#ranklist > li.group").all():
        n = group.locator("li.card").count()
        out += [group.locator(".rank-num").inner_text() + ("=" if n > 1 else "")] * n
    return out


def drag_above(page, original: int, target_index: int) -> None:
    """A real mouse drag: the card's handle onto the top edge of the card now at ``target_index``
    (between two ranks: the card gets a rank of its own there)."""
    handle = card(page, original).locator(".handle").bounding_box()
    target = page.locator("#ranklist li.card").nth(target_index).bounding_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(handle["x"] + 5, target["y"] + 4, steps=12)
    page.mouse.up()


def give_score(page, original: int, score: int) -> None:
    """Open the card's detail and click the score (mouse)."""
    c = card(page, original)
    if c.locator(".detail").is_hidden():
        c.locator(".detail-toggle").click()
    c.locator(f".likert-option:has(input[value='{score}']) span").click()


def submit_and_export(page, store, tmp_path, shot: str) -> data.Ranking:
    page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
    page.click("text=Submit ranking")
    page.wait_for_selector("text=Saved ✓")
    page.screenshot(path=str(ARTIFACTS / f"{shot}_saved.png"), full_page=True)
    export_dir(store, tmp_path / "export")
    (ranking,) = data.load_rankings(tmp_path / "export" / "rankings.jsonl")
    return ranking


def test_rank_by_drag_and_drop_with_a_tie(browser, site, tmp_path):
    store, server = site
    ARTIFACTS.mkdir(exist_ok=True)
    context, page, errors = open_task(browser, server.base_url)
    # Target (original indices): 1 best, then 3 and 0 tied, then 2.
    target = [1, 3, 0, 2]
    for i, original in enumerate(target):
        if order(page)[i] != original:
            drag_above(page, original, i)
    assert order(page) == target
    card(page, 0).locator(".tie-up").click()  # 0 tied with 3 above it
    for original, score in {1: 7, 3: 5, 0: 5, 2: 2}.items():
        give_score(page, original, score)
    card(page, 2).locator("input[value=hallucination]").check()
    assert ranks(page) == ["1", "2=", "2=", "3"]
    ranking = submit_and_export(page, store, tmp_path, "rank_drag")
    assert ranking.labeler_id == "ann" and ranking.prompt_id == "p0"
    assert ranking.responses == [f"Sample {i} for p0" for i in range(4)]
    assert ranking.ranking == [[1], [0, 3], [2]]
    assert ranking.likert == [5, 7, 2, 5]
    assert ranking.flags == [[], [], ["hallucination"], []]
    assert not errors, errors  # no CSP violations or script errors
    context.close()
    context, page, errors = log_in(browser, server.base_url, "root")
    page.wait_for_selector("text=Inter-labeler agreement")
    assert page.locator("table.grid td", has_text="ann").count() == 1
    page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)
    assert not errors, errors
    context.close()
    print(f"\n[browser] screenshots in {ARTIFACTS}: rank_drag.png, rank_drag_saved.png, admin.png")


def test_rank_with_the_keyboard_only(browser, site, tmp_path):
    store, server = site
    context, page, errors = open_task(browser, server.base_url)
    start = order(page)
    # Move the bottom card to the top with the arrow keys, then tie the last card with the one above.
    bottom = card(page, start[-1])
    bottom.focus()
    for _ in range(3):
        page.keyboard.press("ArrowUp")
    assert order(page) == [start[-1], *start[:-1]]
    # "Move down" button of the (new) second rank, then a tie via the keyboard
    group_of(page, start[0]).locator(".move-down").focus()
    page.keyboard.press("Enter")
    now = order(page)
    assert now == [start[-1], start[1], start[0], start[2]]
    card(page, now[3]).locator(".tie-up").focus()
    page.keyboard.press("Space")
    for original in range(4):
        card(page, original).focus()
        page.keyboard.press("4")
    ranking = submit_and_export(page, store, tmp_path, "rank_keyboard")
    assert ranking.ranking == [[now[0]], [now[1]], sorted([now[2], now[3]])]
    assert not errors, errors
    context.close()
