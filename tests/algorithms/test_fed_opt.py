"""FedAdam, FedYogi, FedAdagrad against the paper's Algorithm 2 written out in NumPy."""

import numpy as np
import optax
import optimization_reference as ref
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras  # noqa: F401 (selects the JAX backend before keras loads)
from fedjax_keras.algorithms import (
    AlgorithmSettings,
    build_fed_adagrad,
    build_fed_adam,
    build_fed_yogi,
    get_algorithm,
)
from fedjax_keras.testing import assert_trees_all_close, toy_models

LR, SERVER_LR, B1, B2, TAU = 0.1, 0.05, 0.9, 0.99, 1e-3
BUILDERS = {"adam": build_fed_adam, "yogi": build_fed_yogi, "adagrad": build_fed_adagrad}


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=41))


def _hand_server(kind, x, m, v, d):
    """Algorithm 2 of arXiv:2003.00295, lines 11-15, in float64."""
    m = {k: B1 * m[k] + (1 - B1) * d[k] for k in d}
    if kind == "adagrad":
        v = {k: v[k] + d[k] ** 2 for k in d}
    elif kind == "yogi":
        v = {k: v[k] - (1 - B2) * d[k] ** 2 * np.sign(v[k] - d[k] ** 2) for k in d}
    else:
        v = {k: B2 * v[k] + (1 - B2) * d[k] ** 2 for k in d}
    x = {k: x[k] + SERVER_LR * m[k] / (np.sqrt(v[k]) + TAU) for k in d}
    return x, m, v


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_two_rounds_equal_algorithm_2(model, kind):
    cohort = make_clients([5, 2, 7], seed=42)
    options = {"beta1": B1, "tau": TAU, **({"beta2": B2} if kind != "adagrad" else {})}
    process = BUILDERS[kind](
        model, optax.sgd(LR), SERVER_LR, batch_size=ref.BATCH, shuffle=False, **options
    )
    state = process.initialize(0)
    nt = model.initial_weights.non_trainable
    x = ref.as64(model.initial_weights.trainable)
    m = {k: np.zeros_like(a) for k, a in x.items()}
    v = {k: np.full_like(a, TAU**2) for k, a in x.items()}
    for _ in range(2):
        state = process.next(state, cohort).state
        deltas = [ref.sub(ref.sgd(model, x, nt, ref.batches(c), LR), x) for _, c in cohort]
        x, m, v = _hand_server(kind, x, m, v, ref.mean(deltas, cohort.client_sizes))
        assert_trees_all_close(state.model.trainable, x, rtol=1e-4, atol=1e-5)
    assert_trees_all_close(state.optimizer_state.m, m, rtol=1e-4, atol=1e-6)
    assert int(state.optimizer_state.count) == 2


def test_bad_parameters_are_clear_errors(model):
    with pytest.raises(ValueError, match=r"beta2 must be a number in \[0, 1\)"):
        build_fed_yogi(model, optax.sgd(LR), beta2=1.0)
    with pytest.raises(ValueError, match="tau must be a number > 0"):
        build_fed_adam(model, optax.sgd(LR), tau=0.0)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_registry_entries_build_the_papers_rule_and_improve_on_leaf(name):
    """The CLI's entries (default options) train softmax regression on LEAF Synthetic."""
    data, model = ref.leaf_task()
    entry = get_algorithm(name)
    assert entry.options["beta1"] == 0.9 and entry.options["tau"] == 1e-3
    settings = AlgorithmSettings(
        client_lr=0.05, server_lr=None, population_size=data.num_clients, options=entry.options
    )
    process = entry.make(model, settings, **ref.LEAF_ENGINE)
    assert process.name == "fed_" + name[3:]
    before = ref.population_loss(model, data, model.initial_weights)
    state = ref.train_rounds(process, data)
    after = ref.population_loss(model, data, state.model)
    assert after < 0.8 * before, (before, after)
