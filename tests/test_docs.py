"""The docs stay true to the code: every metric the code logs is on docs/metrics.md, every relative link
of README.md and docs/*.md points at a file (and heading) that exists, and the README names no design
file or issue number. Fast: the code is read as text (ast), and the only import is for names the code
builds from a list (the DPO statistics, the guards' image statistics).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
METRICS_PAGE = DOCS / "metrics.md"
DOCUMENTS = [README, *sorted(DOCS.glob("*.md"))]

# The namespaces of what a run logs (metrics.jsonl rows and the trackers).
METRIC_PREFIXES = ("train", "eval", "search", "guard", "time")
# A metric name, or an f-string's template with `{}` where a value goes: `guard/image_{}`.
METRIC_NAME = re.compile(rf"^(?:{'|'.join(METRIC_PREFIXES)})/[\w{{}}/]+$")
# Modules that only read metrics other code logs (to plot or summarise them); what they read need not be
# logged, so it is not asked of the page. A module that logs metrics must not be listed here.
READERS = {"tscale_train/shapes/evaluation.py", "tscale_train/export/card.py"}


def _template(node: ast.JoinedStr) -> str:
    return "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)


def logged_names() -> dict[str, list[str]]:
    """Every metric name (or f-string template) in tscale_train's code -> where it occurs."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "tscale_train").rglob("*.py")):
        module = path.relative_to(REPO).as_posix()
        if module in READERS:
            continue
        tree = ast.parse(path.read_text(), filename=module)
        # An f-string's literal parts are Constant nodes too: skip them, the f-string is read whole.
        inside_fstrings = {
            id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = _template(node)
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in inside_fstrings
            ):
                text = node.value
            else:
                continue
            # A name ending in `_` or `/` is a prefix the code filters by (`"guard/image_"`), not a metric.
            if METRIC_NAME.match(text) and not text.endswith(("_", "/")):
                found.setdefault(text, []).append(f"{module}:{node.lineno}")
    return found


def _dpo_statistics() -> list[str]:
    """The names `train/{name}` takes: the loss and every statistic `flow_dpo_loss` returns."""
    from tscale_train.dpo import flow_dpo_loss

    tensors = [torch.randn(2, 4) for _ in range(6)]
    _, stats = flow_dpo_loss(*tensors, beta=1.0)
    return ["loss", *stats]


def expansions() -> dict[str, list[str]]:
    """Templates whose values come from a list in the code: each expanded name must be on the page."""
    from tscale_train.guards import IMAGE_STATISTICS

    return {
        "train/{}": [f"train/{name}" for name in _dpo_statistics()],
        "guard/image_{}": [f"guard/image_{name}" for name in IMAGE_STATISTICS],
        "guard/{}_drift": [f"guard/{name}_drift" for name in IMAGE_STATISTICS],
    }


def documented_names(text: str) -> set[str]:
    """Every `prefix/name` the page writes in backticks."""
    return {
        token
        for token in re.findall(r"`([^`\s]+)`", text)
        if re.match(rf"^(?:{'|'.join(METRIC_PREFIXES)})/", token)
    }


def _placeholder_pattern(template: str) -> re.Pattern[str]:
    """`guard/{}` -> what the page writes for it: `guard/<name>` (any word in angle brackets)."""
    return re.compile("^" + r"<[\w-]+>".join(re.escape(part) for part in template.split("{}")) + "$")


def missing_from_page(page: str) -> list[str]:
    documented = documented_names(page)
    found = logged_names()
    expanded = expansions()
    missing = []
    for name, places in sorted(found.items()):
        if name in expanded:
            missing += [
                f"{each} (from {name} at {places[0]})" for each in expanded[name] if each not in documented
            ]
        elif "{}" in name:
            pattern = _placeholder_pattern(name)
            if not any(pattern.match(token) for token in documented):
                missing.append(f"{name.replace('{}', '<name>')} (at {places[0]})")
        elif name not in documented:
            missing.append(f"{name} (at {places[0]})")
    return missing


def test_the_code_logs_the_metrics_this_test_expects():
    """The extraction itself works: it finds literal names, f-string templates and the listed expansions."""
    found = logged_names()
    assert {"train/num_pairs", "eval/reward_budget0", "search/best_reward", "time/round_seconds"} <= set(
        found
    )
    assert {"train/{}", "guard/image_{}", "guard/{}"} <= set(found), sorted(found)
    assert {"train/loss", "train/implicit_acc", "train/inside_abs"} <= set(expansions()["train/{}"])


def test_every_logged_metric_is_on_the_metrics_page():
    missing = missing_from_page(METRICS_PAGE.read_text())
    assert not missing, (
        "metrics the code logs that docs/metrics.md does not name (in backticks; a name built from a value as "
        "`prefix/<name>`): describe them there, or, for a module that only reads metrics, add it to READERS:\n  "
        + "\n  ".join(missing)
    )


def test_a_metric_missing_from_the_page_is_caught():
    page = METRICS_PAGE.read_text()
    for name in ("train/inside_abs", "guard/held", "eval/amortisation_ratio", "guard/image_saturation"):
        assert f"`{name}`" in page
        assert any(item.startswith(name + " ") for item in missing_from_page(page.replace(f"`{name}`", name)))
    assert any(
        item.startswith("guard/<name>")
        for item in missing_from_page(page.replace("`guard/<name>`", "guard/name"))
    )


def test_every_metric_on_the_page_is_one_the_code_logs():
    """The tables' first column names only what a run logs, so the page cannot keep a metric the code dropped."""
    found = logged_names()
    concrete = {name for name in found if "{}" not in name}
    concrete |= {each for names in expansions().values() for each in names}
    patterns = [_placeholder_pattern(name) for name in found if "{}" in name]
    metrics_part = METRICS_PAGE.read_text().split("\n## Files", 1)[0]  # not the table of files
    listed = re.findall(r"^\| `([^`]+)` \|", metrics_part, flags=re.MULTILINE)
    stale = [
        name
        for name in listed
        if re.match(rf"^(?:{'|'.join(METRIC_PREFIXES)})/", name)
        and name not in concrete
        and not any(pattern.match(name) for pattern in patterns)
    ]
    assert not stale, f"docs/metrics.md lists metrics the code does not log: {stale}"


# ---- links -------------------------------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _without_code(text: str) -> str:
    """The text outside fenced blocks and inline code, where a link is a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (outside fenced blocks)."""
    anchors: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"^#{1,6}\s+(.*?)\s*$", line)):
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(REPO).as_posix())
def test_every_relative_link_points_at_an_existing_file(document):
    broken = []
    for target in LINK.findall(_without_code(document.read_text())):
        if re.match(r"^[a-z][\w+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(REPO)}")
    assert not broken, f"{document.relative_to(REPO)}: broken links:\n  " + "\n  ".join(broken)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(REPO).as_posix())
def test_no_design_file_or_issue_numbers(document):
    """The README and the docs stand on their own: no design file outside the repository, no issue numbers."""
    text = document.read_text()
    assert "DESIGN.md" not in text
    issues = re.findall(r"\bissues?\s*#?\d+", text, flags=re.IGNORECASE)
    assert not issues, f"{document.relative_to(REPO)} names issues: {issues}"


def test_the_docs_index_lists_every_page():
    index = (DOCS / "index.md").read_text()
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall(index)}
    pages = {path.name for path in DOCS.glob("*.md")} - {"index.md"}
    assert pages <= linked, f"docs/index.md does not link {sorted(pages - linked)}"
