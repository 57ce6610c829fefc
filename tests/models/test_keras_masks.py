"""Keras masks (Embedding(mask_zero=True)) are honoured by the loss and the metrics, as in Keras."""

import keras
import numpy as np
import optax

import fedjax_keras
from fedjax_keras.algorithms import build_fed_eval


def _net():
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(10, 4, mask_zero=True),
            keras.layers.LSTM(5, return_sequences=True),
            keras.layers.Dense(10),
        ]
    )


def _batch():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 10, (4, 6)).astype(np.int32)
    x[0, 3:] = 0  # padded tokens: masked by Keras
    x[2, 1:] = 0
    y = rng.integers(0, 10, (4, 6)).astype(np.int32)
    return x, y


def test_loss_and_accuracy_skip_masked_tokens_like_keras_evaluate():
    x, y = _batch()
    net = _net()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = fedjax_keras.from_keras_model(
        net, {"x": x, "y": y}, loss=loss, metrics=[keras.metrics.SparseCategoricalAccuracy()]
    )
    reference = keras.models.clone_model(net)
    reference.set_weights(net.get_weights())
    reference.compile(loss=loss, metrics=[keras.metrics.SparseCategoricalAccuracy()])
    keras_loss, keras_accuracy = reference.evaluate(x, y, batch_size=4, verbose=0)

    output = model.forward_pass(model.initial_weights, {"x": x, "y": y}, training=False)
    accuracy = model.finalize_metrics(
        model.update_metrics(
            model.init_metrics(), {"x": x, "y": y}, output.predictions, output.output_masks
        )
    )["sparse_categorical_accuracy"]
    np.testing.assert_allclose(float(output.loss), keras_loss, rtol=1e-5)
    np.testing.assert_allclose(float(accuracy), keras_accuracy, rtol=1e-5)
    # And the unmasked mean differs, so the test can fail.
    per_token = np.asarray(loss.call(y, output.predictions))
    assert abs(per_token.mean() - keras_loss) > 1e-4

    # The engine's evaluation uses the same masks.
    evaluation = build_fed_eval(model, batch_size=4)
    metrics = evaluation.next(evaluation.initialize(), [{"x": x, "y": y}]).metrics
    np.testing.assert_allclose(metrics["loss"], keras_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["sparse_categorical_accuracy"], keras_accuracy, rtol=1e-5)


def test_training_step_on_masked_tokens_equals_keras_train_on_batch():
    x, y = _batch()
    net = _net()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = fedjax_keras.from_keras_model(
        net, {"x": x, "y": y}, loss=loss, optimizer=optax.sgd(0.5)
    )
    reference = keras.models.clone_model(net)
    reference.set_weights(net.get_weights())
    reference.compile(loss=loss, optimizer=keras.optimizers.SGD(0.5))
    reference.train_on_batch(x, y)

    weights, _, _ = model.train_step(
        model.initial_weights, model.init_optimizer_state(model.initial_weights), {"x": x, "y": y}
    )
    ours = model.to_keras(weights)
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
