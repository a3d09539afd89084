"""The ranking page in headless Chromium: a K=9 task ranked with two ties by keyboard and by mouse,
drag auto-scroll, lost pointer capture, bidi isolation, and the documentation screenshots.

Each test checks what the database stores (through the export), not only what the page shows.
Screenshots go to tests/labeling/artifacts/; with INSTRUCTGPT_DOCS_SCREENSHOTS=1 the two
documentation screenshots are also written to docs/img/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from instructgpt import data
from instructgpt.labeling.export import export_dir
from instructgpt.labeling.store import open_store
from instructgpt.labeling.tasks import import_file

from .conftest import ARTIFACTS
from .helpers import PASSWORD, add_user
from .rank_fixtures import EMAIL, SKY, write_realistic_tasks

pytestmark = pytest.mark.timeout(240)

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
# The target: 3 best; 0 and 7 tied; 5; 1; 2 and 8 tied; 4; 6 worst.
TARGET = [[3], [0, 7], [5], [1], [2, 8], [4], [6]]
FLAT = [i for group in TARGET for i in group]
LIKERT = [6, 2, 1, 7, 1, 5, 2, 6, 1]
FLAGGED = {2: "hallucination", 8: "hallucination"}


@pytest.fixture
def site(sqlite_url, tmp_path, live_server):
    store = open_store(sqlite_url)
    add_user(store, "ann")
    yield store, tmp_path, lambda *files: _serve(store, sqlite_url, live_server, *files)
    store.dispose()


def _serve(store, url, live_server, *files):
    for f in files:
        import_file(store, "rank", f)
    return live_server(url, insecure_cookies=False)


def open_task(browser, server, viewport=(1280, 900)):
    """Log in as ann, claim, and open the first task; returns (context, page, console errors)."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.base_url + "/login")
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.click("text=more tasks")
    page.wait_for_selector("#ranklist .card")
    return context, page, errors


def groups(page, texts=SKY) -> list[list[int]]:
    """The ranks as shown, top to bottom, as sorted lists of original response indices."""
    return [sorted(g) for g in page.evaluate("""(texts) => Array.from(document.querySelectorAll('#ranklist > li.group')).map(
        g => Array.from(g.querySelectorAll('li.card .response-text')).map(t => texts.indexOf(t.textContent)))""",
                                              texts)]


def flat(page) -> list[int]:
    """Top to bottom (only meaningful while no two responses are tied)."""
    return [i for g in groups(page) for i in g]


def card(page, original: int, texts=SKY):
    pos = page.evaluate("""([texts, i]) => Array.from(document.querySelectorAll('#ranklist li.card')).find(
        c => c.querySelector('.response-text').textContent === texts[i]).dataset.pos""", [texts, original])
    return page.locator(f"#ranklist li.card[data-pos='{pos}']")


def group_at(page, index: int):
    return page.locator("#ranklist > li.group").nth(index)


def stored_ranking(store, tmp_path) -> data.Ranking:
    export_dir(store, tmp_path / "export")
    (ranking,) = data.load_rankings(tmp_path / "export" / "rankings.jsonl")
    return ranking


def check_stored(ranking: data.Ranking) -> None:
    assert ranking.responses == SKY and ranking.labeler_id == "ann"
    assert ranking.ranking == TARGET
    assert ranking.likert == LIKERT
    assert ranking.flags == [[FLAGGED[i]] if i in FLAGGED else [] for i in range(9)]


# ---------------------------------------------------------------- keyboard

def test_rank_k9_with_two_ties_by_keyboard(browser, site):
    store, tmp_path, serve = site
    server = serve(write_realistic_tasks(tmp_path / "k9.jsonl", 9))
    context, page, errors = open_task(browser, server)
    assert page.locator("#ranklist .card").count() == 9
    # Order: bring each response up to its place with the arrow keys.
    for i, original in enumerate(FLAT):
        card(page, original).focus()
        for _ in range(flat(page).index(original) - i):
            page.keyboard.press("ArrowUp")
    assert groups(page) == [[i] for i in FLAT]
    # Ties are explicit: T joins the rank above.
    card(page, 7).focus()
    page.keyboard.press("t")
    card(page, 8).focus()
    page.keyboard.press("T")
    assert groups(page) == TARGET
    # Moving a tied card moves its whole rank: the tie never changes on the way.
    card(page, 7).focus()
    page.keyboard.press("ArrowDown")
    assert groups(page) == [[3], [5], [0, 7], [1], [2, 8], [4], [6]]
    page.keyboard.press("ArrowUp")
    assert groups(page) == TARGET
    # U unties (the card gets its own rank right below), T ties it again.
    card(page, 8).focus()
    page.keyboard.press("u")
    assert groups(page) == [[3], [0, 7], [5], [1], [2], [8], [4], [6]]
    page.keyboard.press("t")
    assert groups(page) == TARGET
    assert "tied with" in card(page, 7).locator(".rank-badge").inner_text()
    # Scores with the digit keys; flags through the card's detail (Enter, Tab, Space, Escape).
    for original, score in enumerate(LIKERT):
        card(page, original).focus()
        page.keyboard.press(str(score))
    for original in FLAGGED:
        card(page, original).focus()
        page.keyboard.press("Enter")
        assert card(page, original).locator(".detail").is_visible()
        for _ in range(3):  # past the scores: fails_to_follow, violates_constraint, hallucination
            page.keyboard.press("Tab")
        page.keyboard.press("Space")
        page.keyboard.press("Escape")
        assert card(page, original).locator(".detail").is_hidden()
    assert page.locator("#score-status").inner_text() == "All 9 responses scored"
    # the order summary next to the prompt shows the ranks, ties and scores
    best = page.locator("#order-summary > li").first
    assert best.locator(".chip").inner_text().replace("\n", "") == card(page, 3).get_attribute("data-letter") + "7"
    assert page.locator("#order-summary > li.tied").count() == 2
    page.locator("button.submit").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Saved ✓")
    check_stored(stored_ranking(store, tmp_path))
    assert not errors, errors
    context.close()


# ---------------------------------------------------------------- mouse

def drag_card(page, original: int, target_group: int, join: bool) -> None:
    """Drag a card by its handle to just above rank ``target_group`` (join=False: a rank of its own)
    or onto its middle (join=True: tie), scrolling by holding the pointer at an edge if needed."""
    handle = card(page, original).locator(".handle")
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 4, y + 4, steps=2)
    height = page.viewport_size["height"]
    for _ in range(200):  # hold at the edge until the target is well inside the window
        target = group_at(page, target_group).bounding_box()
        if 140 < target["y"] and target["y"] + min(target["height"], 80) < height - 140:
            break
        page.mouse.move(x, 3 if target["y"] <= 140 else height - 3)
        page.wait_for_timeout(50)
    page.mouse.move(x, height / 2, steps=2)  # out of the edge zone: the scrolling stops
    page.wait_for_timeout(100)
    target = group_at(page, target_group).bounding_box()
    page.mouse.move(x, target["y"] + (target["height"] / 2 if join else 4), steps=4)
    page.mouse.up()


def test_rank_k9_with_two_ties_by_drag(browser, site):
    store, tmp_path, serve = site
    server = serve(write_realistic_tasks(tmp_path / "k9.jsonl", 9))
    context, page, errors = open_task(browser, server)
    for i, original in enumerate(FLAT):
        if flat(page)[i] != original:
            drag_card(page, original, i, join=False)
        assert flat(page)[: i + 1] == FLAT[: i + 1], (i, flat(page))
    assert groups(page) == [[i] for i in FLAT]
    drag_card(page, 7, 1, join=True)  # onto rank 2 (response 0): a tie
    assert groups(page) == [[3], [0, 7], [5], [1], [2], [8], [4], [6]]
    drag_card(page, 8, 4, join=True)
    assert groups(page) == TARGET
    # Dragging a tied card out between two ranks gives it its own rank there; dropping it back ties it again.
    drag_card(page, 0, 3, join=False)
    assert groups(page) == [[3], [7], [5], [0], [1], [2, 8], [4], [6]]
    drag_card(page, 0, 1, join=True)
    assert groups(page) == TARGET
    for original, score in enumerate(LIKERT):
        c = card(page, original)
        c.locator(".detail-toggle").click()
        c.locator(f".likert-option:has(input[value='{score}']) span").click()
        if original in FLAGGED:
            c.locator(f"input[value={FLAGGED[original]}]").check()
        c.locator(".detail-toggle").click()  # fold it again
    page.locator("button.submit").click()
    page.wait_for_selector("text=Saved ✓")
    check_stored(stored_ranking(store, tmp_path))
    assert not errors, errors
    context.close()


def test_submit_without_every_score_opens_the_missing_one(browser, site):
    store, tmp_path, serve = site
    server = serve(write_realistic_tasks(tmp_path / "k4.jsonl", 4))
    context, page, _ = open_task(browser, server)
    for original in (0, 1, 3):
        card(page, original, EMAIL).focus()
        page.keyboard.press("5")
    page.locator("button.submit").click()
    assert page.locator("#submit-problem").inner_text().startswith("Give every response a score")
    assert card(page, 2, EMAIL).locator(".detail").is_visible()  # opened, and focus is on its scores
    assert page.evaluate("document.activeElement.name") == "likert_" + card(page, 2, EMAIL).get_attribute("data-pos")
    page.keyboard.press("ArrowRight")  # radio group: the arrow keys pick a score
    page.locator("button.submit").click()
    page.wait_for_selector("text=Saved ✓")
    assert stored_ranking(store, tmp_path).likert[2] in range(1, 8)
    context.close()


def test_drag_keeps_scrolling_while_the_pointer_rests_near_an_edge(browser, site):
    _, tmp_path, serve = site
    server = serve(write_realistic_tasks(tmp_path / "k9.jsonl", 9))
    context, page, errors = open_task(browser, server, viewport=(1280, 600))
    before = groups(page)
    handle = page.locator("#ranklist .card .handle").first.bounding_box()
    x, y = handle["x"] + 5, handle["y"] + 5
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x, 545, steps=5)  # inside the bottom edge zone (72 px at 600), then rest
    page.wait_for_timeout(150)
    first = page.evaluate("window.scrollY")
    page.wait_for_timeout(500)
    second = page.evaluate("window.scrollY")
    assert second > first + 40, (first, second)  # no pointer movement in between
    page.mouse.move(x, 40, steps=3)  # the top edge: scrolls back up, still without moving
    page.wait_for_timeout(150)
    third = page.evaluate("window.scrollY")
    page.wait_for_timeout(400)
    assert page.evaluate("window.scrollY") < third
    page.keyboard.press("Escape")  # cancel: nothing changes
    page.mouse.up()
    assert groups(page) == before
    assert page.locator(".card.dragging").count() == 0
    assert not errors, errors
    context.close()


def test_lost_pointer_capture_ends_the_drag_cleanly(browser, site):
    _, tmp_path, serve = site
    server = serve(write_realistic_tasks(tmp_path / "k9.jsonl", 9))
    context, page, errors = open_task(browser, server)
    before = groups(page)
    handle = page.locator("#ranklist .card .handle").first.bounding_box()
    x, y = handle["x"] + 5, handle["y"] + 5
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x, y + 250, steps=5)
    assert page.locator(".card.dragging").count() == 1 and page.locator(".drag-ghost").is_visible()
    released = page.evaluate("""() => {
        const h = document.querySelector('.card.dragging .handle');
        for (const id of [1, 0, 2, 3]) { if (h.hasPointerCapture(id)) { h.releasePointerCapture(id); return id; } }
        return null; }""")
    assert released is not None
    page.mouse.move(x, y + 260)  # the browser reports the lost capture before the next pointer event
    assert page.locator(".card.dragging").count() == 0
    assert page.locator(".drag-ghost").is_hidden() and page.locator(".drop-line").is_hidden()
    page.mouse.move(x, y + 400, steps=5)  # the pointer keeps moving and is released: nothing happens
    page.mouse.up()
    assert groups(page) == before
    assert "cancelled" in page.locator("#rank-status").inner_text()
    assert not errors, errors
    context.close()


# ---------------------------------------------------------------- bidi

def test_labeler_visible_text_is_bidi_isolated(browser, site):
    _, tmp_path, serve = site
    rtl = tmp_path / "rtl.jsonl"
    responses = ["\u202eevil override: this runs right to left", "שלום עולם, זו תשובה", "plain", "مرحبا بالعالم"]
    rtl.write_text(json.dumps({"prompt": "\u202eReversed prompt", "prompt_id": "rtl",
                                    "responses": responses}, ensure_ascii=False) + "\n")
    server = serve(rtl)
    context, page, errors = open_task(browser, server)
    styles = page.evaluate("""() => Array.from(document.querySelectorAll('.prompt-text, .response-text')).map(
        e => [e.getAttribute('dir'), getComputedStyle(e).unicodeBidi])""")
    assert styles == [["auto", "isolate"]] * 5
    # the letter of each card and the text around the responses stay left to right
    assert set(page.evaluate("""() => Array.from(document.querySelectorAll('.card .letter, .card-head .controls'))
        .map(e => getComputedStyle(e).direction)""")) == {"ltr"}
    page.goto(server.base_url + "/")
    assert page.evaluate("""() => Array.from(document.querySelectorAll('td.preview')).map(
        e => [e.getAttribute('dir'), getComputedStyle(e).unicodeBidi])""") == [["auto", "isolate"]]
    assert not errors, errors
    context.close()


# ---------------------------------------------------------------- screenshots

def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.wait_for_timeout(1300)  # let the "just moved" highlight fade
    page.screenshot(path=str(path))
    assert path.stat().st_size < 300_000, f"{name}: {path.stat().st_size} bytes"
    if os.environ.get("INSTRUCTGPT_DOCS_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        (DOCS_IMG / name).write_bytes(path.read_bytes())


def test_screenshots_k4_and_k9(browser, site):
    """docs/img/labeling-rank-k4.png and -k9.png: 1280x900, a labeler part-way through each task."""
    _, tmp_path, serve = site
    server = serve(write_realistic_tasks(tmp_path / "k4.jsonl", 4), write_realistic_tasks(tmp_path / "k9.jsonl", 9))
    context, page, errors = open_task(browser, server)
    plans = {  # k: (texts, order best first, cards to tie with the rank above, scores given, card with a flag)
        4: (EMAIL, [0, 3, 2, 1], [2], {0: 6, 3: 4, 2: 4, 1: 1}, 1),
        9: (SKY, FLAT, [7, 8], {i: LIKERT[i] for i in (3, 0, 7, 5, 1)}, None),
    }
    for assignment in page.evaluate("fetch('/api/assignments').then(r => r.json()).then(j => j.assignments)"):
        page.goto(f"{server.base_url}/a/{assignment['id']}")
        texts, order, ties, scores, flagged = plans[page.locator("#ranklist .card").count()]
        for i, original in enumerate(order):
            card(page, original, texts).focus()
            for _ in range(flat_of(page, texts).index(original) - i):
                page.keyboard.press("ArrowUp")
        for original in ties:
            card(page, original, texts).focus()
            page.keyboard.press("t")
        for original, score in scores.items():
            card(page, original, texts).focus()
            page.keyboard.press(str(score))
        if flagged is not None:
            card(page, flagged, texts).locator(".detail-toggle").click()
            card(page, flagged, texts).locator("input[value=fails_to_follow]").check()
        page.evaluate("window.scrollTo(0, 0); document.activeElement.blur()")
        _shot(page, f"labeling-rank-k{len(order)}.png")
    assert not errors, errors
    context.close()


def flat_of(page, texts) -> list[int]:
    return [i for g in groups(page, texts) for i in g]
