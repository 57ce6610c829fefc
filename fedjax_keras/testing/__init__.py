"""Public test helpers: tree assertions and small deterministic Keras models."""

from fedjax_keras.testing import toy_models as toy_models
from fedjax_keras.testing._trees import assert_trees_all_close as assert_trees_all_close
