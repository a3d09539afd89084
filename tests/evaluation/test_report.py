"""The report renders, is self-contained, and escapes every outside text."""

import base64
import html
from html.parser import HTMLParser

import pytest

from instructgpt.evaluation import (EvalResults, ModelResult, check_claims, render_from_json,
                                    write_report)
from instructgpt.evaluation.report import build_sections, render_html, render_markdown

from . import XSS_ATTR, XSS_SCRIPT, est, make_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Collector(HTMLParser):
    """Every start tag with its attributes, and the text seen."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(text: str) -> _Collector:
    parser = _Collector()
    parser.feed(text)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    md_path, html_path = write_report(make_results(), run_dir)
    return md_path, html_path


def test_files_written(full_report):
    md_path, html_path = full_report
    assert md_path.name == "report.md" and html_path.name == "report.html"
    pngs = list((md_path.parent / "report_files").glob("*.png"))
    assert {p.stem for p in pngs} >= {"win_rates", "win_rates_by_size", "win_rates_by_use_case",
                                      "likert", "metadata", "reward_vs_kl", "training_curves"}
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)


def test_a_report_written_again_leaves_no_figure_of_the_earlier_one(tmp_path):
    """An evaluation run again into the same folder without a judge (or a model) must not leave that judge's
    figures beside a report that no longer has them."""
    write_report(make_results(), tmp_path)
    assert (tmp_path / "report_files" / "likert.png").is_file()
    write_report(EvalResults([ModelResult("ppo_ptx", "ppo_ptx", win_rate={"training": est(0.3)})]), tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    pngs = {p.name for p in (tmp_path / "report_files").glob("*.png")}
    assert pngs and all(f"report_files/{name}" in md for name in pngs)
    assert "likert.png" not in pngs


def test_html_is_self_contained(full_report):
    page = _parse(full_report[1].read_text(encoding="utf-8"))
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "iframe" not in tags and "object" not in tags
    imgs = [a for t, a in page.tags if t == "img"]
    assert len(imgs) >= 7
    for attrs in imgs:
        assert attrs["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(attrs["src"].split(",", 1)[1]).startswith(PNG_MAGIC)
    for tag, attrs in page.tags:
        for key in ("src", "href", "srcset", "action", "poster", "background"):
            if key in attrs:
                assert attrs[key].startswith(("data:", "#")), (tag, key, attrs[key])
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        if tag == "link":
            assert attrs.get("rel") == "icon"
    assert not any("url(" in t and "data:" not in t for t in page.text)


def test_outside_text_is_escaped(full_report):
    md_path, html_path = full_report
    text = html_path.read_text(encoding="utf-8")
    assert XSS_SCRIPT not in text and XSS_ATTR not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert html.escape(XSS_ATTR, quote=True) in text
    page = _parse(text)
    assert not any(t == "img" and a.get("src") == "x" for t, a in page.tags)
    assert not any(t == "b" for t, _ in page.tags)  # "<b>" in a sample stays text
    visible = "".join(page.text)
    assert XSS_SCRIPT in visible and XSS_ATTR in visible  # shown as text, verbatim
    md = md_path.read_text(encoding="utf-8")
    assert "<script>" not in md and "<img src=x" not in md


def test_report_sections_and_claims(full_report):
    text = full_report[1].read_text(encoding="utf-8")
    for title in ("Claims check", "Win rate against sft", "Win rate by use case",
                  "Likert scores", "Metadata rates", "Truthfulness, toxicity and bias",
                  "Alignment tax", "reward vs KL", "Inter-labeler agreement",
                  "Sample outputs: generation", "Sample outputs: open_qa"):
        assert html.escape(title) in text, title
    assert 'class="v-reproduced"' in text
    md = full_report[0].read_text(encoding="utf-8")
    assert "report_files/win_rates.png" in md
    assert "line one<br>line two" in md and "Paris \\| France" in md


def test_minimal_results_show_not_measured(tmp_path):
    res = EvalResults([ModelResult("ppo_ptx", "ppo_ptx", win_rate={"training": est(0.3)})])
    md_path, html_path = write_report(res, tmp_path)
    text = html_path.read_text(encoding="utf-8")
    assert text.count("not measured") >= 8
    assert 'class="v-not-reproduced"' in text  # claim (a) with an interval below 0.5
    assert 'class="v-not-measured"' in text
    _parse(text)
    assert write_report(EvalResults(), tmp_path / "empty")[1].exists()


def test_render_from_json(tmp_path):
    res = make_results(with_flan=False)
    path = tmp_path / "results.json"
    res.save(path)
    md_path, html_path = render_from_json(path)
    assert html_path.parent == tmp_path
    direct = render_markdown(build_sections(res))
    assert md_path.read_text(encoding="utf-8") == direct
    assert "FLAN / T0 baseline" in md_path.read_text(encoding="utf-8")


def test_awkward_names_render():
    res = make_results()
    res.models[0].name = "gpt $x^2$ & <co>"
    res.samples[0].use_case = "custom <case>"
    page = render_html(build_sections(res, check_claims(res)))
    assert "gpt $x^2$ &amp; &lt;co&gt;" in page
    assert "custom &lt;case&gt;" in page


def test_benchmark_rows_show_n_and_no_zero_width_share(tmp_path):
    """Toxicity rows from 40 clean items: the n is shown and the interval is not [0.000, 0.000]."""
    from instructgpt.evaluation import share
    clean = share([0.0] * 40)
    res = EvalResults([ModelResult("sft", "sft", benchmarks={"toxicity_plain": clean}),
                       ModelResult("ppo", "ppo", benchmarks={"toxicity_plain": clean,
                                                             "truthfulqa_truthful": est(0.9, 0.05, 22)})])
    rows = [r for sec in build_sections(res) for b in sec.blocks if hasattr(b, "rows") for r in b.rows]
    row = next(r for r in rows if r[0].startswith("toxicity"))
    assert row == ["toxicity_plain (n=40)", "0.000 [0.000, 0.088]", "0.000 [0.000, 0.088]"]
    truth = next(r for r in rows if r[0].startswith("truthfulqa"))
    assert truth == ["truthfulqa_truthful (n=22)", "not measured", "0.900 [0.850, 0.950]"]
    mixed = EvalResults([ModelResult("a", "sft", benchmarks={"toxicity_plain": share([0.0] * 40)}),
                         ModelResult("b", "ppo", benchmarks={"toxicity_plain": share([0.0] * 30)})])
    rows = [r for sec in build_sections(mixed) for b in sec.blocks if hasattr(b, "rows") for r in b.rows]
    row = next(r for r in rows if r[0].startswith("toxicity"))
    assert row[0] == "toxicity_plain" and row[1].endswith("(n=40)") and row[2].endswith("(n=30)")


def test_agreement_rows_show_what_they_rest_on():
    res = EvalResults([ModelResult("sft", "sft")],
                      agreement={"training-training": est(0.71, 0.03, 2582), "heldout-heldout": est(0.77, 0.03, 2559)},
                      meta={"agreement_basis": {"training-training": "60 of 626 test prompts (the first 60)"}})
    sec = next(s for s in build_sections(res) if s.title == "Inter-labeler agreement")
    table = next(b for b in sec.blocks if hasattr(b, "rows"))
    assert table.headers[-1] == "rests on"
    assert table.rows[0][-1] == "60 of 626 test prompts (the first 60)" and table.rows[0][2] == "2582"
    assert table.rows[1][-1] == "not recorded"  # an older results.json
    run = next(s for s in build_sections(res) if s.title == "Run")
    assert not any(r[0] == "agreement_basis" for b in run.blocks for r in b.rows)


def test_the_training_curves_are_drawn_against_the_ppo_iteration(monkeypatch):
    """PPO's metrics.jsonl logs one row per iteration (its 'step'): the curves' axes say so, not 'step'."""
    from instructgpt.evaluation import plots
    drawn = []
    monkeypatch.setattr(plots, "_png", lambda fig: drawn.append(fig) or b"")
    build_sections(make_results())
    curves = [f for f in drawn if any(ax.get_title().startswith("ppo/") for ax in f.axes)]
    assert curves and {ax.get_xlabel() for f in curves for ax in f.axes} == {"PPO iteration"}


def _answer_text(ptx_win: float, measured: tuple[str, ...] = ("rm_accuracy_by_criterion", "best_of_n")) -> str:
    """The report's first section for a PPO-ptx with held-out win rate ``ptx_win`` +- 0.03, an RM clearly below
    its ceiling on truthfulness (by 30 points) and on constraints (by 12), within it on harm, and best-of-4 picks."""
    def pair(rm, ceiling):
        return {"pairs": 300, "rm": est(rm).to_dict(), "ceiling": est(ceiling).to_dict()}
    def pick(follow):
        return {"true_follow": est(follow).to_dict(), "utility": est(0.5).to_dict()}
    meta = {"rm_accuracy_by_criterion": {"constraints": pair(0.60, 0.72), "truthfulness": pair(0.50, 0.80),
                                         "harm": pair(0.88, 0.90)},
            "best_of_n": {"1": {"rm": pick(0.66), "oracle": pick(0.66)},
                          "4": {"rm": pick(0.70), "oracle": pick(0.81)}}}
    res = EvalResults([ModelResult("ppo_ptx", "ppo_ptx", win_rate={"heldout": est(ptx_win)})], baseline="sft",
                      meta={k: meta[k] for k in measured})
    answer = build_sections(res)[0]
    assert answer.title == "The answer"
    return render_markdown([answer], None).replace("\\", "")  # without the Markdown escapes


def test_the_answer_says_why_a_policy_is_not_preferred_in_the_runs_own_numbers():
    text = _answer_text(0.51)
    why = text[text.index("Why, measured"):]
    # the clearly-below criteria, largest gap first; harm (within its interval) is not blamed
    assert why.index("truthfulness: 50.0% [47.0, 53.0] against 80.0%") < why.index("constraints: 60.0%")
    assert "harm" not in why.split("Of 4 answers")[0]
    assert "the first truly follows the instruction in 66.0%" in why
    assert "the reward model's pick in 70.0% [67.0, 73.0] and a perfect reward model's pick in 81.0%" in why
    assert "hold better ones than the reward model points to" in why
    assert "Why, measured" not in _answer_text(0.60)  # a policy that is preferred needs no excuse
    assert "Why, measured: Of 4 answers the SFT policy samples" in _answer_text(0.51, measured=("best_of_n",))
