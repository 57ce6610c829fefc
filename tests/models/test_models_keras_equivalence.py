"""`from_keras_model` against Keras itself: predictions, loss, and training steps.

The reference for every case is a second, compiled instance of the same toy
model (same seeded weights): its forward pass, its ``compute_loss`` and its
``train_on_batch``. Tolerances are float32 round-off, stated once.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import keras
import numpy as np
import optax
import pytest

import fedjax_keras as fk
from fedjax_keras.testing import assert_trees_all_close, toy_models

TOL = {"rtol": 1e-5, "atol": 1e-5}
LR = 0.1
SPARSE_CE = "sparse_categorical_crossentropy_from_logits"


def _loss(name):
    if name == SPARSE_CE:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return name


@dataclasses.dataclass(frozen=True)
class Case:
    build: Callable[[], keras.Model]
    x: Any
    y: Any
    loss: Any = SPARSE_CE
    loss_weights: Any = None
    # Keras' trainer runs a subclassed model whose call() lacks `training` in
    # inference mode; its reference is the same model with the argument.
    reference_build: Callable[[], keras.Model] | None = None

    def losses(self):
        if isinstance(self.loss, dict):
            return {k: _loss(v) for k, v in self.loss.items()}
        return _loss(self.loss)


_rng = np.random.RandomState(0)
_X = _rng.randn(6, 4).astype(np.float32)
_Y = np.array([0, 1, 2, 2, 1, 0], np.int32)

CASES = {
    # Dropout(0.0) keeps a seed generator in the model without making masks matter.
    "mlp_l2_dropout0": Case(lambda: toy_models.mlp(l2=0.05, dropout=0.0), _X, _Y),
    "mlp_batch_norm": Case(lambda: toy_models.mlp(batch_norm=True), _X, _Y),
    "mlp_frozen": Case(lambda: toy_models.mlp(freeze_first=True), _X, _Y),
    "cnn": Case(toy_models.cnn, _rng.randn(6, 6, 6, 1).astype(np.float32), _Y),
    "multi_io": Case(
        lambda: toy_models.multi_io(l2=0.05),
        {"a": _rng.randn(6, 4).astype(np.float32), "b": _rng.randn(6, 3).astype(np.float32)},
        {"cls": _Y, "reg": _rng.randn(6, 1).astype(np.float32)},
        loss={"cls": SPARSE_CE, "reg": "mse"},
        loss_weights={"cls": 0.7, "reg": 2.0},
    ),
    "subclassed_bn": Case(
        toy_models.subclassed,
        _X,
        _Y,
        reference_build=lambda: toy_models.subclassed(training_arg=True),
    ),
    "subclassed_bn_training_arg": Case(lambda: toy_models.subclassed(training_arg=True), _X, _Y),
    "embedding_lstm": Case(
        toy_models.embedding_lstm, _rng.randint(0, 10, (6, 5)).astype(np.int32), _Y % 2
    ),
    "nested_bn": Case(toy_models.nested, _X, _Y),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case_setup(request):
    """Wrapped model, its Keras source, and one SGD step of both, per case."""
    case = CASES[request.param]
    net = case.build()
    model = fk.from_keras_model(
        net, (case.x, case.y), case.losses(), case.loss_weights, optimizer=optax.sgd(LR)
    )
    reference = (case.reference_build or case.build)()
    reference.compile(
        optimizer=keras.optimizers.SGD(LR),
        loss=case.losses(),
        loss_weights=case.loss_weights,
        run_eagerly=True,
    )
    net_before = [np.array(w) for w in net.get_weights()]
    weights = model.initial_weights
    step = jax.jit(model.train_step)
    new_weights, _, output = step(weights, model.init_optimizer_state(weights), (case.x, case.y))
    return {
        "case": case,
        "net": net,
        "model": model,
        "reference": reference,
        "net_before": net_before,
        "new_weights": new_weights,
        "output": output,
    }


def test_reference_starts_from_the_same_weights(case_setup):
    assert_trees_all_close(
        case_setup["reference"].get_weights(), case_setup["net"].get_weights(), rtol=0, atol=0
    )


def test_inference_predictions_equal_keras(case_setup):
    model, net, case = case_setup["model"], case_setup["net"], case_setup["case"]
    assert_trees_all_close(model.apply(model.initial_weights, case.x), net(case.x), **TOL)


def test_training_mode_predictions_equal_keras(case_setup):
    model, _net, case = case_setup["model"], case_setup["net"], case_setup["case"]
    predictions, _ = model.apply(
        model.initial_weights, case.x, training=True, rng=jax.random.key(0)
    )
    fresh = case.build()  # calling Keras in training mode changes its BatchNorm statistics
    assert_trees_all_close(predictions, fresh(case.x, training=True), **TOL)


def test_loss_equals_keras_compute_loss(case_setup):
    model, reference, case = case_setup["model"], case_setup["reference"], case_setup["case"]
    expected = reference.compute_loss(
        x=case.x, y=case.y, y_pred=reference(case.x, training=False), training=False
    )
    actual = model.loss(model.initial_weights, (case.x, case.y), training=False)
    np.testing.assert_allclose(actual, expected, **TOL)


def test_one_sgd_step_equals_train_on_batch(case_setup):
    model, reference, case = case_setup["model"], case_setup["reference"], case_setup["case"]
    keras_loss = reference.train_on_batch(case.x, case.y)
    if isinstance(keras_loss, list):  # multi-output: [total, per-output losses...]
        keras_loss = keras_loss[0]
    np.testing.assert_allclose(case_setup["output"].loss, keras_loss, **TOL)
    # Compared in Keras' own weight order (BatchNorm statistics included), so the
    # check does not rely on our path names.
    trained = model.to_keras(case_setup["new_weights"])
    assert_trees_all_close(trained.get_weights(), reference.get_weights(), **TOL)
    assert case_setup["output"].num_examples == len(_Y)


def test_keras_model_is_never_mutated(case_setup):
    model, net = case_setup["model"], case_setup["net"]
    model.to_keras(case_setup["new_weights"])
    model.apply(model.initial_weights, case_setup["case"].x, training=True, rng=jax.random.key(1))
    assert_trees_all_close(net.get_weights(), case_setup["net_before"], rtol=0, atol=0)
    assert not net.compiled


def test_loss_hand_computed_with_regularization():
    """Hand formula: mean cross-entropy + 0.05 * sum(kernel**2) of the hidden layer."""
    net = toy_models.mlp(l2=0.05)
    model = fk.from_keras_model(net, (_X, _Y), CASES["mlp_l2_dropout0"].losses())
    kernel = net.layers[0].kernel.numpy()
    logits = np.asarray(net(_X), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -log_probs[np.arange(6), _Y].mean() + 0.05 * np.sum(kernel.astype(np.float64) ** 2)
    np.testing.assert_allclose(model.loss(model.initial_weights, (_X, _Y)), expected, rtol=1e-5)


def test_multi_output_loss_as_lists_is_the_weighted_sum():
    case = CASES["multi_io"]
    net = case.build()
    losses = [keras.losses.SparseCategoricalCrossentropy(from_logits=True), "mse"]
    model = fk.from_keras_model(net, (case.x, case.y), losses, loss_weights=[0.7, 2.0])
    assert model.output_names == ("cls", "reg")
    out = net(case.x)
    expected = (
        0.7 * losses[0](case.y["cls"], out["cls"])
        + 2.0 * keras.losses.MeanSquaredError()(case.y["reg"], out["reg"])
        + sum(net.losses)
    )
    np.testing.assert_allclose(model.loss(model.initial_weights, (case.x, case.y)), expected, **TOL)
    # Labels may be given as a list in output order, too.
    np.testing.assert_allclose(
        model.loss(model.initial_weights, (case.x, [case.y["cls"], case.y["reg"]])), expected, **TOL
    )


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda: keras.optimizers.Adam(0.01), lambda: keras.optimizers.SGD(0.05, momentum=0.9)],
    ids=["adam", "sgd_momentum"],
)
def test_keras_optimizer_steps_equal_train_on_batch(make_optimizer):
    net = toy_models.mlp(l2=0.01)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    user_optimizer = make_optimizer()
    model = fk.from_keras_model(net, (_X, _Y), loss, optimizer=user_optimizer)
    reference = toy_models.mlp(l2=0.01)
    reference.compile(optimizer=make_optimizer(), loss=loss, run_eagerly=True)
    weights = model.initial_weights
    state = model.init_optimizer_state(weights)
    step = jax.jit(model.train_step)
    for i in range(3):
        batch = (_X[i : i + 4], _Y[i : i + 4])
        weights, state, _ = step(weights, state, batch)
        reference.train_on_batch(*batch)
    assert_trees_all_close(model.to_keras(weights).get_weights(), reference.get_weights(), **TOL)
    assert not user_optimizer.built  # the user's optimizer object is left alone
