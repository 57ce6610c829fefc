"""Keras models as pure JAX functions; the only package that imports keras."""

from fedjax_keras.models._backend import select_jax_backend_if_unset as _select

_select()

from fedjax_keras.models._batch import Batch as Batch  # noqa: E402
from fedjax_keras.models._centroids import CENTROIDS_PATH as CENTROIDS_PATH  # noqa: E402
from fedjax_keras.models._centroids import centroid_model as centroid_model  # noqa: E402
from fedjax_keras.models._example_fields import (  # noqa: E402
    split_example_fields as split_example_fields,
)
from fedjax_keras.models._example_fields import (  # noqa: E402
    with_example_fields as with_example_fields,
)
from fedjax_keras.models._from_keras import from_keras_model as from_keras_model  # noqa: E402
from fedjax_keras.models._lora import enable_lora as enable_lora  # noqa: E402
from fedjax_keras.models._model import Model as Model  # noqa: E402
from fedjax_keras.models._weights import BatchOutput as BatchOutput  # noqa: E402
from fedjax_keras.models._weights import ModelWeights as ModelWeights  # noqa: E402
