"""Every algorithm as a pure factory: the same under any runner, the same as its builder, sweepable.

Each factory returns a `FederatedAlgorithm`; ``FederatedProcess(model, factory(...), ...)``
must give (a) the same weights under the vmapped and the sequential executors, (b) the
same bits as the TFF-named builder, and (c) inside `fk.sweep`, runs that equal separate
runs with the same seed and learning rates. Where the sweep cannot set a run's server
learning rate it refuses, and says why: evaluation and k-means have no server optimizer,
FedOpt's is not the sweep's SGD, HypCluster stacks one per cluster.

Cheap on purpose: one tiny MLP for all, two clients of a few examples, two rounds; the
learning rates are injected hyper-parameters so that the programs of one case share
their compiled code.
"""

import functools
from typing import NamedTuple

import optax
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras as fk
from fedjax_keras import algorithms as alg
from fedjax_keras.algorithms import FederatedProcess
from fedjax_keras.testing import assert_trees_all_close, toy_models

ENGINE = {"batch_size": 2, "chunk_size": 2, "shuffle": False}
ROUNDS = 2
CLIENT_RATE = 0.05  # the local SGD rate of the algorithms that take a rate, not an optimizer
# Run 0 of every sweep is the reference run below; run 1 differs in everything.
SEEDS, CLIENT_LRS, SERVER_LRS = [0, 1], [0.05, 0.1], [1.0, 0.5]
NO_SERVER_OPTIMIZER = "server optimizer must be the injected one"


class Case(NamedTuple):
    """One factory and its builder, both called with a client and a server optimizer."""

    factory: object  # (model, client_optimizer, server_optimizer) -> FederatedAlgorithm
    builder: object  # (model, client_optimizer, server_optimizer, **engine) -> FederatedProcess
    model: str = "mlp"  # 'mlp', 'kmeans' (the centroids) or 'personal' (join_train_test's flag)
    sweep_error: str | None = None  # the sweep's message where it cannot run the algorithm


def _mime_base(client):
    # Mime mimics a base optimizer whose state lives on the server: a sweep sets the
    # server's learning rate, and the base keeps its own.
    del client
    return alg.paper_momentum(CLIENT_RATE, 0.9)


CASES = {
    "fed_avg": Case(
        lambda m, c, s: alg.fed_avg(m, c, s),
        lambda m, c, s, **e: alg.build_weighted_fed_avg(m, c, s, **e),
    ),
    "fed_avg_uniform": Case(
        lambda m, c, s: alg.fed_avg(m, c, s, weighting=alg.ClientWeighting.UNIFORM),
        lambda m, c, s, **e: alg.build_unweighted_fed_avg(m, c, s, **e),
    ),
    "fed_adam": Case(
        lambda m, c, s: alg.fed_opt(m, c, 0.01, kind="adam"),
        lambda m, c, s, **e: alg.build_fed_adam(m, c, 0.01, **e),
        sweep_error=NO_SERVER_OPTIMIZER,
    ),
    "fed_prox": Case(
        lambda m, c, s: alg.fed_prox(m, c, s, mu=0.1),
        lambda m, c, s, **e: alg.build_fed_prox(m, c, s, mu=0.1, **e),
    ),
    "fed_sgd": Case(
        lambda m, c, s: alg.fed_sgd(m, s),
        lambda m, c, s, **e: alg.build_fed_sgd(m, s, **e),
    ),
    "scaffold": Case(
        lambda m, c, s: alg.scaffold(m, CLIENT_RATE, s),
        lambda m, c, s, **e: alg.build_scaffold(m, CLIENT_RATE, s, **e),
    ),
    "mime": Case(
        lambda m, c, s: alg.mime(m, _mime_base(c), s),
        lambda m, c, s, **e: alg.build_mime(m, _mime_base(c), s, **e),
        sweep_error=r"first pass over each cohort",
    ),
    "mime_previous_round": Case(
        lambda m, c, s: alg.mime(m, _mime_base(c), s, control_variate="previous_round"),
        lambda m, c, s, **e: alg.build_mime(
            m, _mime_base(c), s, control_variate="previous_round", **e
        ),
    ),
    "mime_lite": Case(
        lambda m, c, s: alg.mime_lite(m, _mime_base(c), s),
        lambda m, c, s, **e: alg.build_mime_lite(m, _mime_base(c), s, **e),
    ),
    "fed_nova": Case(
        lambda m, c, s: alg.fed_nova(m, CLIENT_RATE, s, momentum=0.5),
        lambda m, c, s, **e: alg.build_fed_nova(m, CLIENT_RATE, s, momentum=0.5, **e),
    ),
    "fed_dyn": Case(
        lambda m, c, s: alg.fed_dyn(m, c, s, alpha=0.1),
        lambda m, c, s, **e: alg.build_fed_dyn(m, c, s, alpha=0.1, **e),
    ),
    "fed_buff": Case(
        lambda m, c, s: alg.fed_buff(m, c, s, max_staleness=1),
        lambda m, c, s, **e: alg.build_fed_buff(m, c, s, max_staleness=1, **e),
    ),
    "ditto": Case(
        lambda m, c, s: alg.ditto(m, c, s, lam=0.1),
        lambda m, c, s, **e: alg.build_ditto(m, c, s, lam=0.1, **e),
    ),
    "apfl": Case(
        lambda m, c, s: alg.apfl(m, CLIENT_RATE, s, alpha=0.5, alpha_learning_rate=0.1),
        lambda m, c, s, **e: alg.build_apfl(
            m, CLIENT_RATE, s, alpha=0.5, alpha_learning_rate=0.1, **e
        ),
    ),
    "pfedme": Case(
        lambda m, c, s: alg.pfedme(m, CLIENT_RATE, s, inner_steps=2),
        lambda m, c, s, **e: alg.build_pfedme(m, CLIENT_RATE, s, inner_steps=2, **e),
    ),
    "fed_rep": Case(
        lambda m, c, s: alg.fed_rep(m, c, s, head_steps=1),
        lambda m, c, s, **e: alg.build_fed_rep(m, c, s, head_steps=1, **e),
    ),
    "fed_recon": Case(
        # The reconstruction optimizer is not the run's: a sweep sets the client optimizer's rate.
        lambda m, c, s: alg.fed_recon(m, c, optax.sgd(CLIENT_RATE), s),
        lambda m, c, s, **e: alg.build_fed_recon(m, c, optax.sgd(CLIENT_RATE), s, **e),
    ),
    "fed_recon_eval": Case(
        lambda m, c, s: alg.fed_recon_eval(m, c),
        lambda m, c, s, **e: alg.build_fed_recon_eval(m, c, **e),
        sweep_error=NO_SERVER_OPTIMIZER,
    ),
    "fed_per": Case(
        lambda m, c, s: alg.fed_per(m, c, s),
        lambda m, c, s, **e: alg.build_fed_per(m, c, s, **e),
    ),
    "q_ffl": Case(
        lambda m, c, s: alg.q_ffl(m, CLIENT_RATE, s),
        lambda m, c, s, **e: alg.build_q_ffl(m, CLIENT_RATE, s, **e),
    ),
    "agnostic_fed_avg": Case(
        lambda m, c, s: alg.agnostic_fed_avg(m, c, s, domain_learning_rate=0.5),
        lambda m, c, s, **e: alg.build_agnostic_fed_avg(m, c, s, domain_learning_rate=0.5, **e),
        sweep_error=r"first pass over each cohort",
    ),
    "hyp_cluster": Case(
        lambda m, c, s: alg.hyp_cluster(m, c, s, num_clusters=2),
        lambda m, c, s, **e: alg.build_hyp_cluster(m, c, s, num_clusters=2, **e),
        # Its k server optimizers are stacked [k, ...]: one learning rate per run does not fit.
        sweep_error=r"optimizer_state does not fit hyp_cluster",
    ),
    "fed_eval": Case(
        lambda m, c, s: alg.fed_eval(m, per_client=True),
        lambda m, c, s, **e: alg.build_fed_eval(m, per_client=True, **e),
        sweep_error=NO_SERVER_OPTIMIZER,
    ),
    "personalization_eval": Case(
        lambda m, c, s: alg.personalization_eval(m, c, fine_tune_steps=1),
        lambda m, c, s, **e: alg.build_personalization_eval(m, c, fine_tune_steps=1, **e),
        model="personal",
        sweep_error=NO_SERVER_OPTIMIZER,
    ),
    "fed_kmeans": Case(
        lambda m, c, s: alg.fed_kmeans(m),
        lambda m, c, s, **e: alg.build_fed_kmeans(2, (4,), **e),
        model="kmeans",
        sweep_error=NO_SERVER_OPTIMIZER,
    ),
}

# Each algorithm's numbers are tested in its own file (by hand), the executors' agreement
# in tests/parallel/ and the sweep's in tests/engine/test_sweep.py. In the fast tier, the
# algorithms of different shapes (plain, proximal, adaptive server, client table, personal
# models, broadcast state, stacked clusters, evaluation) show the factories run everywhere;
# the others run in the slow tier.
FAST_CASES = ("fed_avg", "fed_prox", "fed_adam", "scaffold", "ditto", "mime", "hyp_cluster")
CASE_NAMES = [
    name if name in FAST_CASES + ("fed_eval",) else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(CASES)
]


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(hidden=4, seed=7))


@pytest.fixture(scope="module")
def population():
    return make_clients([3, 5, 2], seed=8)


def _sgd(rate):
    # Injected: the rate is state, so programs that differ only in it compile alike.
    return optax.inject_hyperparams(optax.sgd)(learning_rate=rate)


def _setting(case, model, population):
    """``(model the process runs, model the factory takes, cohorts of ROUNDS rounds)``."""
    if case.model == "kmeans":
        return alg.kmeans_model(2, (4,)), alg.kmeans_model(2, (4,)), _cohorts(population)
    if case.model == "personal":
        joined = alg.join_train_test(*population.train_test_split(0.4, seed=0))
        return alg.personalization_eval_model(model), model, _cohorts(joined)
    return model, model, _cohorts(population)


def _cohorts(data):
    return [data.sample_clients(2, seed=r) for r in range(ROUNDS)]


def _train(process, cohorts, seed=0):
    state = process.initialize(seed)
    for cohort in cohorts:
        out = process.next(state, cohort)
        state = out.state
    return out


def _factory_process(case, run_model, factory_model, runner, k=0):
    algorithm = case.factory(factory_model, _sgd(CLIENT_LRS[k]), _sgd(SERVER_LRS[k]))
    return FederatedProcess(run_model, algorithm, runner=runner, **ENGINE)


@functools.cache
def _vmapped(name, model, population):
    """Run 0's reference (vmap, seed 0): both tests compare with it; computed once per case."""
    case = CASES[name]
    run_model, factory_model, cohorts = _setting(case, model, population)
    return _train(_factory_process(case, run_model, factory_model, "vmap"), cohorts)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_factory_runs_alike_everywhere_and_equals_its_builder(name, model, population):
    case = CASES[name]
    run_model, factory_model, cohorts = _setting(case, model, population)
    vmapped = _vmapped(name, model, population)
    sequential = _train(_factory_process(case, run_model, factory_model, "sequential"), cohorts)
    assert_trees_all_close(sequential.state.model, vmapped.state.model, 1e-5, 1e-6)
    assert sequential.metrics["loss"] == pytest.approx(vmapped.metrics["loss"], rel=1e-5)

    built = case.builder(factory_model, _sgd(CLIENT_LRS[0]), _sgd(SERVER_LRS[0]), **ENGINE)
    by_builder = _train(built, cohorts)
    assert type(by_builder.state.model) is type(vmapped.state.model)
    assert_trees_all_close(by_builder.state.model, vmapped.state.model, 0.0, 0.0)
    assert_trees_all_close(_numbers(by_builder.metrics), _numbers(vmapped.metrics), 0.0, 0.0)


def _numbers(metrics):
    # The builder may add host metrics (percentiles) the bare process lacks; compare the rest.
    skip = ("per_client/", "runner")
    return {k: v for k, v in metrics.items() if not k.startswith(skip)}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_factory_inside_a_sweep_equals_separate_runs(name, model, population):
    case = CASES[name]
    run_model, factory_model, cohorts = _setting(case, model, population)

    def make_runs():
        return fk.sweep(
            lambda c, s: FederatedProcess(
                run_model, case.factory(factory_model, c, s), runner="vmap", **ENGINE
            ),
            SEEDS,
            CLIENT_LRS,
            SERVER_LRS,
        )

    def run_all():
        runs = make_runs()
        states = runs.initialize()
        for cohort in cohorts:
            states = runs.next(states, cohort).state
        return runs, states

    if case.sweep_error is not None:
        with pytest.raises(ValueError, match=case.sweep_error):
            run_all()
        return
    runs, states = run_all()
    separate_run_1 = _factory_process(case, run_model, factory_model, "vmap", 1)
    for k, alone in enumerate(
        [_vmapped(name, model, population), _train(separate_run_1, cohorts, SEEDS[1])]
    ):
        assert_trees_all_close(runs.run_state(states, k).model, alone.state.model, 1e-5, 1e-6)
