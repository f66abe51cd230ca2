"""The README and docs stay true: every relative link resolves, and the README's Python example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, run_in_process

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_resolves(page):
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(target)
    assert not bad, f"{page.name}: {bad}"


def test_the_readmes_python_example_runs(tmp_path, monkeypatch):
    (block,) = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)[:1]
    assert "from unlearn import unlearn" in block
    run_in_process("main_baseline.py", "--dataset", "digits", "--epochs", "1", "--save_dir", str(tmp_path),
                   "--quiet")
    code = block.replace("results/digits/2smallcnn_ep30model_SA_best.pth.tar",
                         str(tmp_path / "2smallcnn_ep1model_SA_best.pth.tar"))
    assert code != block
    monkeypatch.chdir(REPO)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102  (our own README's example)
    result = scope["result"]
    assert result.recipe.epochs == 5 and len(result.history) == 5
    assert result.method.alpha == 0.999
