"""The documentation: links that resolve, no reference to anything outside the repository, a short README, and the
study's tables in docs/results.md equal to the numbers the study wrote (experiments/results/study/study.csv)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name} links to {target}: no such heading in {dest.name}"


def test_nothing_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    # spelled in pieces, so this file does not match itself
    pattern = re.compile("|".join([r"DESIGN" + r"\.md", r"papers" + r"/\w+\.txt", r"\bissues? " + r"\d+\b"]))
    hits = []
    for name in tracked.stdout.split():
        path = ROOT / name
        if path.suffix in {".py", ".md", ".toml", ".txt", ".cfg"} or path.name == "Makefile":
            hits += [f"{name}: {m.group(0)}" for m in pattern.finditer(path.read_text(errors="replace"))]
    assert not hits, hits


def test_readme_is_the_pitch():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def _docs_study_rows() -> dict[tuple[str, str], list[str]]:
    """(dataset, method) -> cells of the study tables in docs/results.md."""
    text = (ROOT / "docs" / "results.md").read_text()
    section = text[text.index("## Grid or learned, at equal compute"):text.index("## The main job")]
    rows, dataset = {}, None
    for line in section.splitlines():
        if m := re.fullmatch(r"\*\*(digits-[a-z]+)\*\*", line.strip()):
            dataset = m.group(1)
        elif dataset and line.startswith("| ") and not line.startswith(("| method", "| ---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(dataset, cells[0])] = cells[1:]
    return rows


def test_study_tables_match_the_studys_numbers():
    csv = pd.read_csv(ROOT / "experiments" / "results" / "study" / "study.csv")
    docs = _docs_study_rows()
    assert len(docs) == len(csv)
    for r in csv.itertuples():
        # the docs name the per-pair CF-Conv as such; every other method as the study does
        label = next(k[1] for k in docs if k[0] == r.dataset and (k[1] == r.method or k[1].startswith(r.method + " (")))
        acc, seconds, flops, _ = docs[(r.dataset, label)]
        sd = 0.0 if pd.isna(r.acc_std) else r.acc_std  # one seed: the study prints a spread of 0
        assert acc == f"{r.acc_mean:.3f} +- {sd:.3f} ({r.acc_min:.3f}-{r.acc_max:.3f})", (r.dataset, label)
        assert seconds == f"{r.seconds:.0f}" and flops == f"{r.flops / 1e9:.1f}", (r.dataset, label)


@pytest.mark.parametrize("folder", ["study_heldout", "study_heldout_10ep"])
def test_the_held_out_studys_tables_are_the_ones_it_wrote(folder):
    """docs/results.md holds the study's own table (study.md) verbatim, and the README the study's README table of
    the default run: every number in them was written by ``python -m experiments.grid_vs_learned_study``."""
    out = ROOT / "experiments" / "results" / folder
    results = (ROOT / "docs" / "results.md").read_text()
    for block in (out / "study.md").read_text().strip().split("\n\n"):
        assert block.strip() in results, block[:200]
    if folder == "study_heldout":
        assert (out / "readme_table.md").read_text().strip() in (ROOT / "README.md").read_text()
    # the CSV and the Markdown agree (the Markdown is rendered from the table the CSV holds)
    csv = pd.read_csv(out / "study.csv")
    for r in csv.itertuples():
        assert f"| {r.method} | {r.seeds} | {r.acc_mean:.3f} [{r.acc_low:.3f}, {r.acc_high:.3f}] |" in results
