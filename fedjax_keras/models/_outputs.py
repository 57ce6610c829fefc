"""The model's output structure: names, and per-output views of predictions and labels."""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from fedjax_keras import errors


@dataclasses.dataclass(frozen=True)
class OutputStructure:
    """How a model's outputs are laid out.

    Attributes:
      names: one name per output (Keras' ``output_names`` for functional models,
        the dict keys for dict outputs, ``output_<i>`` otherwise).
      kind: 'single' (one array), 'sequence' (list/tuple) or 'dict'.
    """

    names: tuple[str, ...]
    kind: str

    @classmethod
    def of(cls, outputs: Any, keras_names: Sequence[str] | None) -> "OutputStructure":
        if isinstance(outputs, Mapping):
            return cls(tuple(outputs.keys()), "dict")
        if isinstance(outputs, (list, tuple)):
            if keras_names is not None and len(keras_names) == len(outputs):
                names = tuple(keras_names)
            else:
                names = tuple(f"output_{i}" for i in range(len(outputs)))
            return cls(names, "sequence")
        name = keras_names[0] if keras_names and len(keras_names) == 1 else "output"
        return cls((name,), "single")

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    def split_predictions(self, outputs: Any) -> list:
        """The model's outputs as a list in `names` order."""
        if self.kind == "dict":
            return [outputs[name] for name in self.names]
        if self.kind == "sequence":
            return list(outputs)
        return [outputs]

    def split_labels(self, y: Any) -> list:
        """Labels as a list in `names` order; accepts a dict by name or a sequence.

        Raises:
          InvalidBatchError: when ``y`` does not have one entry per output.
        """
        if self.kind == "single":
            if isinstance(y, Mapping) and set(y) == set(self.names):
                return [y[self.names[0]]]
            return [y]
        if isinstance(y, Mapping):
            if set(y) != set(self.names):
                raise errors.InvalidBatchError(
                    f"Labels 'y' are a dict with keys {sorted(y)!r}, but the model's outputs are "
                    f"{list(self.names)!r}: give one label array per output name."
                )
            return [y[name] for name in self.names]
        if isinstance(y, (list, tuple)) and len(y) == self.num_outputs:
            return list(y)
        received = f"a {type(y).__name__}" + (
            f" of length {len(y)}" if isinstance(y, (list, tuple)) else ""
        )
        if not isinstance(y, (list, tuple)) and hasattr(y, "shape"):
            received = f"one array of shape {tuple(jax.numpy.shape(y))}"
        raise errors.InvalidBatchError(
            f"The model has {self.num_outputs} outputs {list(self.names)!r}, so 'y' must be a "
            f"list of {self.num_outputs} label arrays or a dict keyed by output name; "
            f"received {received}."
        )
