"""Structural paths for a Keras model's variables.

Keras' own ``variable.path`` embeds auto-generated layer names (``dense_7``)
that differ between two instances of the same architecture, and the order of
``get_weights()`` mixes trainable and non-trainable variables. We name each
variable by where it sits in the layer tree instead: within every container the
child layers are named after their class in snake case, numbered from the second
on (``dense``, ``dense_1``), the same scheme Keras' saving format uses. A variable made without a
name (Keras numbers those from a process-wide counter: ``variable_36``) is
``variable``, ``variable_1``, ... within its layer. Two instances of one
architecture, or a clone, therefore share the same paths.
"""

import dataclasses
import re

import keras
import numpy as np

_SEED_STATE_SUFFIX = "seed_generator_state"


def _snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _unique(name: str, used: dict[str, int]) -> str:
    if name not in used:
        used[name] = 0
        return name
    used[name] += 1
    return f"{name}_{used[name]}"


# ``add_weight()`` without a name: Keras numbers these from a process-wide counter
# (``variable_36``), so two instances of one architecture name them differently.
_UNNAMED = re.compile(r"variable(_\d+)?")


def _variable_name(variable) -> str:
    """The variable's name in its layer, the counter of an unnamed one dropped."""
    return "variable" if _UNNAMED.fullmatch(variable.name) else variable.name


def _walk(layer, prefix: str, paths, seeds, layers) -> None:
    used: dict[str, int] = {}
    layers.setdefault(prefix.rstrip("/"), layer)
    own = list(layer._trainable_variables) + list(layer._non_trainable_variables)
    for variable in own:
        if id(variable) not in paths:
            # Unnamed ones are numbered within their layer, in creation order.
            paths[id(variable)] = prefix + _unique(_variable_name(variable), used)
    for generator in getattr(layer, "_seed_generators", []):
        state = generator.state
        if id(state) not in paths and id(state) not in seeds:
            seeds[id(state)] = prefix + _unique("seed_generator", used)
    for child in layer._flatten_layers(include_self=False, recursive=False):
        if isinstance(child, keras.layers.InputLayer):
            continue
        child_prefix = prefix + _unique(_snake_case(type(child).__name__), used) + "/"
        _walk(child, child_prefix, paths, seeds, layers)


@dataclasses.dataclass(frozen=True)
class VariableLayout:
    """Where each of a built Keras model's variables goes in a `ModelWeights`.

    Attributes:
      trainable: (path, variable) for ``model.trainable_variables``, in Keras order.
      non_trainable: (path, variable) for the non-trainable variables that are
        weights (no seed states), in Keras order.
      seed_states: (path, variable) for the random seed-generator states.
      layers: (path, layer) for every layer of the tree, the model itself at
        ``''``; a layer reached by two paths keeps the first.
    """

    trainable: tuple
    non_trainable: tuple
    seed_states: tuple
    layers: tuple = ()

    @classmethod
    def of(cls, model: keras.Model) -> "VariableLayout":
        paths: dict[int, str] = {}
        seeds: dict[int, str] = {}
        layers: dict[str, keras.Layer] = {}
        _walk(model, "", paths, seeds, layers)
        taken: dict[str, int] = {}

        def path_of(variable) -> str:
            # A variable the walk did not reach (unusual custom tracking) keeps
            # Keras' own path, made unique.
            path = paths.get(id(variable)) or seeds.get(id(variable)) or variable.path
            return _unique(path, taken)

        trainable, non_trainable, seed_states = [], [], []
        for variable in model.trainable_variables:
            trainable.append((path_of(variable), variable))
        for variable in model.non_trainable_variables:
            is_seed = id(variable) in seeds or (
                id(variable) not in paths and variable.name == _SEED_STATE_SUFFIX
            )
            (seed_states if is_seed else non_trainable).append((path_of(variable), variable))
        return cls(
            tuple(trainable), tuple(non_trainable), tuple(seed_states), tuple(layers.items())
        )

    def current_values(self, entries) -> dict:
        """Copies the variables' current values into a dict of numpy arrays."""
        return {path: np.array(variable.value) for path, variable in entries}
