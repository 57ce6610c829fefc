"""Built-in Keras models of the command line, and ``module:function`` user models.

Each built-in is a function ``(input_shape, num_outputs, seed) -> keras.Model``
returning logits. `resolve_model` also accepts ``package.module:function``; the
function is called with no arguments, or with ``input_shape`` and
``num_classes`` keyword arguments when it takes them.
"""

import importlib
import inspect

import keras

from fedjax_keras.cli._errors import UsageError


def emnist_cnn(input_shape, num_classes, seed=0) -> keras.Model:
    """The EMNIST CNN of TFF's and FedJAX's baselines (benchmark Protocol A, ~1.2 M parameters)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 3, activation="relu", kernel_initializer=init),
            keras.layers.Conv2D(64, 3, activation="relu", kernel_initializer=init),
            keras.layers.MaxPooling2D(2),
            keras.layers.Dropout(0.25),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", kernel_initializer=init),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(num_classes, kernel_initializer=init),
        ],
        name="emnist_cnn",
    )


def small_cnn(input_shape, num_classes, seed=0) -> keras.Model:
    """A CNN about 8x cheaper than `emnist_cnn` (pooling after each convolution).

    The default model of the image tasks: it trains a few thousand examples a
    second on a 2-core CPU, so the default run finishes in about a minute.
    """
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(16, 3, activation="relu", kernel_initializer=init),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, activation="relu", kernel_initializer=init),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, kernel_initializer=init),
        ],
        name="small_cnn",
    )


def char_lstm(input_shape, num_classes, seed=0) -> keras.Model:
    """The Shakespeare next-character LSTM (TFF's baseline, one 256-unit layer).

    Input int [batch, seq_len] character ids; logits [batch, seq_len, vocab].
    """
    (seq_len,) = input_shape
    return keras.Sequential(
        [
            keras.Input((seq_len,), dtype="int32"),
            # mask_zero: pad id 0 counts in neither the loss nor the accuracy (as TFF masks it).
            keras.layers.Embedding(
                num_classes,
                8,
                mask_zero=True,
                embeddings_initializer=keras.initializers.RandomUniform(seed=seed),
            ),
            keras.layers.LSTM(
                256,
                return_sequences=True,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                recurrent_initializer=keras.initializers.Orthogonal(seed=seed),
            ),
            keras.layers.Dense(
                num_classes, kernel_initializer=keras.initializers.GlorotUniform(seed=seed)
            ),
        ],
        name="char_lstm",
    )


def logistic_regression(input_shape, num_classes, seed=0) -> keras.Model:
    """Multinomial logistic regression on the flattened input (LEAF Synthetic's model)."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(
                num_classes, kernel_initializer=keras.initializers.GlorotUniform(seed=seed)
            ),
        ],
        name="logistic_regression",
    )


def mlp(input_shape, num_classes, seed=0) -> keras.Model:
    """Two hidden ReLU layers of 200 units (the FedAvg paper's 2NN)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(200, activation="relu", kernel_initializer=init),
            keras.layers.Dense(200, activation="relu", kernel_initializer=init),
            keras.layers.Dense(num_classes, kernel_initializer=init),
        ],
        name="mlp",
    )


# What each built-in needs of one example's x: (rank of its shape, integer dtype).
_INPUTS = {
    "emnist_cnn": (3, False, "images [height, width, channels]"),
    "small_cnn": (3, False, "images [height, width, channels]"),
    "char_lstm": (1, True, "integer token sequences [steps]"),
}

BUILT_IN = {
    "emnist_cnn": emnist_cnn,
    "small_cnn": small_cnn,
    "char_lstm": char_lstm,
    "logreg": logistic_regression,
    "mlp": mlp,
}


def resolve_model(
    name: str, input_shape, num_classes: int, seed: int, integer_inputs: bool = False
) -> keras.Model:
    """The Keras model named by ``--model``: a built-in name or ``module:function``.

    Raises:
      UsageError: unknown name, module or function, a built-in model that does
        not suit the inputs, or a function that fails or returns no Keras model.
    """
    if name in BUILT_IN:
        rank, integer, what = _INPUTS.get(name, (None, integer_inputs, ""))
        if rank is not None and (len(input_shape) != rank or integer != integer_inputs):
            kind = "integer" if integer_inputs else "float"
            raise UsageError(
                f"--model {name}: it takes {what}; the task's examples are {kind} "
                f"{list(input_shape)}. Choose another --model (e.g. logreg or mlp)."
            )
        return BUILT_IN[name](tuple(input_shape), num_classes, seed)
    if ":" not in name:
        raise UsageError(
            f"--model: unknown model {name!r}; expected one of {sorted(BUILT_IN)} "
            "or 'package.module:function' returning a keras.Model."
        )
    module_name, _, function_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"--model: cannot import module {module_name!r} ({error}).") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UsageError(f"--model: module {module_name!r} has no function {function_name!r}.")
    parameters = inspect.signature(function).parameters
    kwargs = {}
    if "input_shape" in parameters:
        kwargs["input_shape"] = tuple(input_shape)
    if "num_classes" in parameters:
        kwargs["num_classes"] = num_classes
    try:
        model = function(**kwargs)
    except Exception as error:  # noqa: BLE001 (the user's function failed: say so in one line)
        raise UsageError(
            f"--model: {name}({', '.join(kwargs)}) raised {type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        ) from None
    if not isinstance(model, keras.Model):
        raise UsageError(
            f"--model: {name} returned {type(model).__name__}; expected a keras.Model."
        )
    return model
