"""The code in docs/models.md runs."""

import pathlib
import re

DOC = pathlib.Path(__file__).parent.parent / "docs" / "models.md"


def test_models_md_code_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})  # noqa: S102 - running our own docs
    printed = capsys.readouterr().out
    assert "'dense/bias', 'dense/kernel', 'dense_1/bias'" in printed
    assert "{'accuracy':" in printed
