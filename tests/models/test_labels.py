"""Sparse labels outside the model's classes are refused, naming the client and the label."""

import keras
import numpy as np
import optax
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras  # noqa: F401
from fedjax_keras.algorithms import build_weighted_fed_avg
from fedjax_keras.data import FederatedData
from fedjax_keras.errors import LabelRangeError
from fedjax_keras.testing import toy_models


@pytest.fixture(scope="module")
def process():
    return build_weighted_fed_avg(wrap(toy_models.mlp(seed=61)), optax.sgd(0.1), batch_size=2)


def _with_label(label, dtype=np.int32):
    clients = {cid: dict(data) for cid, data in make_clients([3, 4], seed=62)}
    bad = dict(clients[13])
    bad["y"] = np.array([0, 1, label, 2], dtype)
    clients[13] = bad
    return FederatedData.from_client_dict(clients)


@pytest.mark.parametrize("label", [3, 100, -1])
def test_out_of_range_labels_name_the_client_and_the_label(process, label):
    with pytest.raises(LabelRangeError, match=rf"Client 13 has the label {label} .*3 classes"):
        process.next(process.initialize(0), _with_label(label))


def test_a_sampled_cohort_checks_its_population_once(process):
    data = _with_label(7)
    cohort = data.sample_clients(1, seed=0)  # whichever client: the population is checked
    with pytest.raises(LabelRangeError, match="label 7"):
        process.next(process.initialize(0), cohort)


def test_float_labels_must_be_whole_numbers(process):
    good = _with_label(2.0, np.float32)
    assert process.next(process.initialize(0), good).metrics["num_examples"] == 7
    with pytest.raises(LabelRangeError, match=r"client 13 has the label 1\.5"):
        process.next(process.initialize(0), _with_label(1.5, np.float32))


def test_in_range_labels_and_non_sparse_losses_pass():
    model = fedjax_keras.from_keras_model(
        toy_models.mlp(seed=63),
        {"x": np.zeros((2, 4), np.float32), "y": np.zeros((2, 3), np.float32)},
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    process = build_weighted_fed_avg(model, optax.sgd(0.1), batch_size=2)
    one_hot = [{"x": np.zeros((2, 4), np.float32), "y": np.eye(3, dtype=np.float32)[[0, 2]]}]
    assert process.next(process.initialize(0), one_hot).metrics["num_examples"] == 2
