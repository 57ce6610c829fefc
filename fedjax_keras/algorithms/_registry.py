"""One registry of the algorithms: the builders, the CLI's ``--algorithm`` and the docs read it.

Each `AlgorithmEntry` says how to build a process from the settings the CLI
knows (client and server learning rates, the population size, named
options such as FedProx's ``mu``), what the algorithm is, and which paper it
comes from. docs/algorithms.md's table is checked against it by the tests,
so a registered algorithm cannot go undocumented.

The built-in entries are listed in one place, ``_catalogue.py``. Registering
another algorithm (a notebook's, a plug-in's) is one call:

    register(AlgorithmEntry("fedfoo", "build_fed_foo", "what it does", "Foo et al. 2024, "
                            "arXiv:...", make=lambda model, s, **engine: build_fed_foo(...)))
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class AlgorithmSettings:
    """What the command line can set, for every algorithm alike.

    Attributes:
      client_lr: the client SGD learning rate.
      server_lr: the server learning rate, or None for the entry's default.
      population_size: clients in the population (for per-client state).
      options: the entry's named options (``{'mu': 0.01}``), defaults filled in.
    """

    client_lr: float
    server_lr: float | None
    population_size: int
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def server_rate(self, default: float) -> float:
        return default if self.server_lr is None else self.server_lr


@dataclasses.dataclass(frozen=True)
class AlgorithmEntry:
    """A registered algorithm.

    Attributes:
      name: the CLI's ``--algorithm`` name.
      builder: the public builder's name in `fedjax_keras.algorithms`.
      summary: one line: what it does.
      reference: the paper (with arXiv id) or system it follows.
      make: ``(model, AlgorithmSettings, **engine_options) -> FederatedProcess``.
      default_server_lr: the server learning rate when none is given.
      options: named options and their defaults (``{'mu': 0.01}``).
      epochs_must_be_one: the algorithm computes one pass (FedSGD).
    """

    name: str
    builder: str
    summary: str
    reference: str
    make: Callable[..., Any]
    default_server_lr: float = 1.0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    epochs_must_be_one: bool = False


_REGISTRY: dict[str, AlgorithmEntry] = {}


def register(entry: AlgorithmEntry) -> AlgorithmEntry:
    """Adds ``entry``; a name registered twice is an error."""
    if entry.name in _REGISTRY:
        raise ValueError(f"An algorithm named {entry.name!r} is already registered.")
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Removes a registered algorithm (for notebooks and tests that register their own)."""
    get_algorithm(name)
    del _REGISTRY[name]


def algorithm_names() -> tuple[str, ...]:
    """Every registered ``--algorithm`` name, in registration order."""
    return tuple(_REGISTRY)


def get_algorithm(name: str) -> AlgorithmEntry:
    """The entry called ``name``; a KeyError lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"Unknown algorithm {name!r}; expected one of {list(_REGISTRY)}.") from None
