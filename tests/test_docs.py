"""The documentation followed literally: its commands name real options, its examples load, its links resolve."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from instructgpt import data
from instructgpt.cli import STAGES, _config_class

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
COMMAND = re.compile(r"instructgpt(?:\.cli)? (" + "|".join(s.name for s in STAGES) + r")\b([^`\n]*)")


def _options(stage: str) -> set[str]:
    cls = _config_class(next(s for s in STAGES if s.name == stage))
    return {f.name for f in dataclasses.fields(cls)}


def _commands(path: Path) -> list[tuple[str, list[str]]]:
    """Every ``instructgpt STAGE key=value ...`` the page shows (continued lines joined, comments cut)."""
    text = path.read_text().replace("\\\n", " ")
    found = []
    for match in COMMAND.finditer(text):
        words = match.group(2).split("#")[0].split()
        found.append((match.group(1), [w.split("=")[0] for w in words if "=" in w and not w.startswith("-")]))
    return found


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_names_options_of_its_stage(page):
    unknown = [(stage, key) for stage, keys in _commands(page) for key in keys
               if key.split(".")[-1] not in _options(stage)]
    assert not unknown, f"{page.name}: options the stage does not have: {unknown}"


def test_data_format_examples_load_as_the_record_they_show():
    """Every JSON line of docs/data-formats.md is a prompt, a demonstration or a ranking for our readers."""
    text = (ROOT / "docs" / "data-formats.md").read_text()
    prompts, failed = [], []
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        for line in block.strip().splitlines():
            obj = json.loads(line)
            readers = [lambda o: prompts.append(data.parse_prompt(o, "doc")),
                       lambda o: data.parse_demonstration(o, "doc", prompts),
                       lambda o: data.parse_ranking(o, "doc", prompts)]
            errors = []
            for read in readers:
                try:
                    read(obj)
                    break
                except data.DataError as e:
                    errors.append(str(e))
            else:
                failed.append((line, errors))
    assert not failed


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    def anchors(md: Path) -> set[str]:
        heads = re.findall(r"^#+\s+(.*)$", md.read_text(), re.M)
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}

    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (anchor and target.suffix == ".md" and anchor not in anchors(target)):
            broken.append(link)
    assert not broken, f"{page.name}: broken links {broken}"


@pytest.mark.parametrize("package", ["", "evaluation"])
def test_module_map_names_every_module(package):
    """docs/architecture.md's module maps (the package's and evaluation/'s) leave no module out."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    folder = ROOT / "src" / "instructgpt" / package
    missing = [p.name for p in sorted(folder.glob("*.py")) if p.name != "__init__.py" and f"`{p.name}`" not in text]
    assert not missing, f"docs/architecture.md: modules of src/instructgpt/{package} it does not map: {missing}"


def test_the_judge_prompt_shown_in_docs_evaluation_is_the_one_sent():
    from instructgpt.evaluation.judges import EMPTY_ANSWER, JUDGE_PROMPT
    text = (ROOT / "docs" / "evaluation.md").read_text()
    shown = re.search(r"reads this prompt.*?```\n(.*?)```", text, re.S).group(1)
    assert shown.strip() == JUDGE_PROMPT.strip()
    assert f"`{EMPTY_ANSWER}`" in text
