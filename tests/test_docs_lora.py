"""The code in docs/lora.md runs, learns, and sends what it says it sends."""

import math
import pathlib
import re

import numpy as np
import pytest

pytest.importorskip("keras_hub")

DOC = pathlib.Path(__file__).parent.parent / "docs" / "lora.md"


@pytest.mark.slow
def test_lora_md_code_runs_and_its_numbers_hold(capsys):
    namespace = {}
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL):
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own docs
    printed = capsys.readouterr().out
    history, vocab = namespace["history"], namespace["VOCAB"]
    first, last = (h["sparse_categorical_accuracy"] for h in (history[0], history[-1]))
    assert last > first and last > 2 / vocab, printed
    # What a client sends: 32 bits a float of its trainable weights, by hand.
    lora_model, full = namespace["process"].model, namespace["full"].model
    lora_floats = sum(math.prod(np.shape(a)) for a in lora_model.initial_weights.trainable.values())
    full_floats = sum(math.prod(np.shape(a)) for a in full.initial_weights.trainable.values())
    assert namespace["lora_bits"] == 32 * lora_floats
    assert namespace["full_bits"] == 32 * full_floats
    assert all("lora" in p or p.endswith("bias") for p in lora_model.initial_weights.trainable)
    assert "LoRA weights: []" in printed
    assert f"({full_floats / lora_floats:.1f}x less)" in printed
