"""The algorithm registry: one list of names for the builders, the CLI and the docs."""

import pathlib
import re

import pytest

import fedjax_keras as fk
from fedjax_keras.algorithms import AlgorithmEntry, algorithm_names, get_algorithm, register
from fedjax_keras.cli import config as cli_config

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"


def test_every_registered_algorithm_has_a_row_in_the_docs_table():
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])}
    missing = [name for name in algorithm_names() if name not in documented]
    assert not missing, f"docs/algorithms.md lacks rows for {missing}"


def test_the_docs_list_every_named_option_with_its_default():
    text = DOCS.read_text()
    listed = text[text.index("<!-- options:") :].split("\n\n")[0].splitlines()[1:]
    documented = {}
    for line in listed:
        names, options = line[2:].split(": ", 1)
        pairs = dict(re.findall(r"`([a-z_0-9]+)=([^`]*)`", options))
        for name in re.findall(r"`([a-z_0-9]+)`", names):
            documented[name] = pairs
    for name in algorithm_names():
        expected = {k: str(v) for k, v in get_algorithm(name).options.items()}
        assert documented.get(name, {}) == expected, name


def test_the_cli_reads_the_registry():
    assert cli_config.ALGORITHMS == algorithm_names()
    assert "fedavg" in algorithm_names() and "scaffold" in algorithm_names()


def test_unknown_and_duplicate_names_are_clear_errors():
    with pytest.raises(KeyError, match=r"Unknown algorithm 'fedfoo'; expected one of \['fedavg'"):
        get_algorithm("fedfoo")
    with pytest.raises(ValueError, match="already registered"):
        register(AlgorithmEntry("fedavg", "b", "s", "r", make=lambda *a, **k: None))


def test_every_entry_names_a_public_builder_and_a_paper():
    for name in algorithm_names():
        entry = get_algorithm(name)
        builder = entry.builder.split("(")[0]
        assert hasattr(fk.algorithms, builder), (name, builder)
        assert entry.reference and entry.summary
