"""One registry of the algorithms: the builders, the CLI's ``--algorithm`` and the docs read it.

Each `AlgorithmEntry` says how to build a process from the settings the CLI
knows (client and server learning rates, the population size, named
options such as FedProx's ``mu``), what the algorithm is, and which paper it
comes from. docs/algorithms.md's table is checked against it by the tests,
so a registered algorithm cannot go undocumented.

Registering a new algorithm is one call in the algorithm's own file:

    register(AlgorithmEntry("fedfoo", "build_fed_foo", "what it does", "Foo et al. 2024, "
                            "arXiv:...", make=lambda model, s, **engine: build_fed_foo(...)))
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import optax


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


def _register_builtin() -> None:
    # The FedAvg family lives here rather than in each file: their CLI
    # settings are a line each. New algorithms register in their own file.
    from fedjax_keras.algorithms import _fed_avg, _fed_opt, _fed_prox, _fed_sgd, _scaffold

    def fed_avg(weighted):
        build = _fed_avg.build_weighted_fed_avg if weighted else _fed_avg.build_unweighted_fed_avg
        return lambda model, s, **engine: build(
            model, optax.sgd(s.client_lr), optax.sgd(s.server_rate(1.0)), **engine
        )

    def fed_opt(build, default_lr):
        # Reddi et al. (arXiv:2003.00295): the paper's rule and defaults (_fed_opt.py);
        # the options are beta1, beta2 (not for Adagrad) and tau.
        return lambda model, s, **engine: build(
            model,
            optax.sgd(s.client_lr),
            s.server_rate(default_lr),
            **{name: float(value) for name, value in s.options.items()},
            **engine,
        )

    fedavg_paper = "McMahan et al. 2017, arXiv:1602.05629"
    reddi = "Reddi et al. 2021, arXiv:2003.00295"
    for entry in (
        AlgorithmEntry(
            "fedavg",
            "build_weighted_fed_avg",
            "FedAvg, client deltas weighted by example count",
            fedavg_paper,
            fed_avg(True),
        ),
        AlgorithmEntry(
            "fedavg_unweighted",
            "build_unweighted_fed_avg",
            "FedAvg, every client with data weighs 1",
            fedavg_paper,
            fed_avg(False),
        ),
        AlgorithmEntry(
            "fedprox",
            "build_fed_prox",
            "local loss plus mu/2 ||w - w_server||^2; mu=0 is FedAvg",
            "Li et al. 2020, arXiv:1812.06127",
            lambda model, s, **engine: _fed_prox.build_fed_prox(
                model,
                optax.sgd(s.client_lr),
                optax.sgd(s.server_rate(1.0)),
                mu=s.options["mu"],
                **engine,
            ),
            options={"mu": 0.01},
        ),
        AlgorithmEntry(
            "fedsgd",
            "build_fed_sgd",
            "one gradient per client at the server weights, averaged, one server step",
            fedavg_paper,
            lambda model, s, **engine: _fed_sgd.build_fed_sgd(
                model, optax.sgd(s.server_rate(0.1)), **engine
            ),
            default_server_lr=0.1,
            epochs_must_be_one=True,
        ),
        AlgorithmEntry(
            "scaffold",
            "build_scaffold",
            "control variates (option II) correct client drift; c_i kept per client",
            "Karimireddy et al. 2020, arXiv:1910.06378",
            lambda model, s, **engine: _scaffold.build_scaffold(
                model,
                s.client_lr,
                optax.sgd(s.server_rate(1.0)),
                population_size=s.population_size,
                **engine,
            ),
        ),
        AlgorithmEntry(
            "fedadam",
            "build_fed_adam",
            "FedOpt: the paper's Adam on the pseudo-gradient (b1 0.9, b2 0.99, tau 1e-3)",
            reddi,
            fed_opt(_fed_opt.build_fed_adam, 0.01),
            default_server_lr=0.01,
            options={"beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
        ),
        AlgorithmEntry(
            "fedyogi",
            "build_fed_yogi",
            "FedOpt: the paper's Yogi on the pseudo-gradient (b1 0.9, b2 0.99, tau 1e-3)",
            reddi,
            fed_opt(_fed_opt.build_fed_yogi, 0.01),
            default_server_lr=0.01,
            options={"beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
        ),
        AlgorithmEntry(
            "fedadagrad",
            "build_fed_adagrad",
            "FedOpt: the paper's Adagrad (with momentum b1 0.9) on the pseudo-gradient, tau 1e-3",
            reddi,
            fed_opt(_fed_opt.build_fed_adagrad, 0.1),
            default_server_lr=0.1,
            options={"beta1": 0.9, "tau": 1e-3},
        ),
    ):
        register(entry)


_register_builtin()
