"""The code in README.md and docs/*.md runs, block after block, one namespace per page."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# docs/models.md has its own test with checks of its printed output.
PAGES = [ROOT / "README.md"] + sorted(
    p for p in (ROOT / "docs").glob("*.md") if p.name not in ("models.md", "cli.md")
)


# algorithms.md trains every registered algorithm end to end (about 40 s): the slow tier.
SLOW_PAGES = ("algorithms.md",)


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW_PAGES else p for p in PAGES],
    ids=lambda p: p.name,
)
def test_page_code_runs(page, capsys):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
    assert blocks, f"{page.name} has no python code to check"
    namespace = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - our own docs
    assert capsys.readouterr().out.strip(), f"{page.name}'s code printed nothing"


def test_architecture_page_names_modules_that_exist():
    """Every ``package/_module.py`` the architecture page names is a file of the package."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"\b([a-z]+/_[a-z_]+\.py)\b", text))
    assert {"engine/_process.py", "engine/_round.py", "engine/_state.py"} <= named
    missing = sorted(m for m in named if not (ROOT / "fedjax_keras" / m).is_file())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
