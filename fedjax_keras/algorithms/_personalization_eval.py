"""Personalization evaluation: each client's metrics before and after local fine-tuning.

As TFF's ``build_personalization_eval``: every client starts from the
server's weights, measures them on its test split ("before"), fine-tunes a
copy on its train split, and measures the copy on the same test split
("after"). Results come per client and as distributions across clients.

A client program sees one sequence of batches, so a client's two splits
travel together: `join_train_test` builds, from a train and a test
`FederatedData` with the same clients (``data.train_test_split(...)``), one
population whose client ``c`` holds its train examples, then its test
examples, each carrying a flag: ``x = {'inputs': x, 'is_test': bool}``. The
process runs a model that accepts that ``x`` (`with_example_fields`) and
strips the flag before Keras sees the inputs. Batches are cut in that order
(no shuffling), so every test example is scored after every fine-tuning
step:

- the train examples of each batch make one fine-tuning step (plain local
  training with ``fine_tune_optimizer``; the batch holding the last train
  examples also holds the first test ones, and steps on its train part
  only), while fewer than ``fine_tune_steps`` steps were taken;
- the test examples of each batch are scored by the server's weights
  (inference mode) and by the fine-tuned weights.

More fine-tuning epochs: ``join_train_test(..., train_repeats=E)`` repeats
each client's train split E times.
"""

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras.aggregation import sum as sum_aggregator
from fedjax_keras.algorithms._checks import check_count
from fedjax_keras.algorithms._client_distribution import (
    PERCENTILES,
    add_host_metric,
    client_percentiles,
)
from fedjax_keras.algorithms._metric_sums import add_batch, empty_sums, finalize_sums
from fedjax_keras.client import ClientOutput, ClientProgram, start_training, training_step
from fedjax_keras.data import FederatedData
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, require_model
from fedjax_keras.models import Model, split_example_fields, with_example_fields
from fedjax_keras.optimizers import as_optimizer

TEST_FLAG = "is_test"


def join_train_test(
    train: FederatedData, test: FederatedData, *, train_repeats: int = 1
) -> FederatedData:
    """One population whose clients hold their train examples, then their test examples.

    Args:
      train, test: the same clients (ids, in the same order) with the same
        example structure, e.g. ``data.train_test_split(0.2, seed=0)``.
      train_repeats: how many times each client's train split is repeated
        (fine-tuning epochs).

    Returns:
      `FederatedData` with the same client ids; client ``c`` holds
      ``train_repeats * n_train_c + n_test_c`` examples, ``x`` is
      ``{'inputs': x, 'is_test': bool [N]}`` and ``y`` as given.

    Raises:
      ValueError: different clients or example structures.

    Example:
      >>> train, test = data.train_test_split(0.25, seed=0)
      >>> joined = join_train_test(train, test)
      >>> sorted(joined.examples["x"])
      ['inputs', 'is_test']
    """
    repeats = check_count(train_repeats, "train_repeats")
    if tuple(train.client_ids) != tuple(test.client_ids):
        raise ValueError(
            "join_train_test needs the same clients in the same order in train and test (as "
            f"train_test_split returns); received {train.num_clients} and {test.num_clients} "
            "clients with different ids."
        )
    structure = lambda d: jax.tree.map(lambda a: (a.shape[1:], a.dtype), d.examples)  # noqa: E731
    if structure(train) != structure(test):
        raise ValueError(
            "train and test examples must share their structure, shapes and dtypes; received "
            f"{structure(train)} and {structure(test)}."
        )
    n_train, n_test = train.client_sizes, test.client_sizes
    lengths = repeats * n_train + n_test
    block_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    rank = np.arange(int(lengths.sum())) - np.repeat(block_starts, lengths)
    own_train = np.repeat(n_train, lengths)
    is_test = rank >= repeats * own_train
    train_row = np.repeat(train.client_offsets[:-1], lengths) + rank % np.maximum(own_train, 1)
    test_row = (
        train.num_examples
        + np.repeat(test.client_offsets[:-1], lengths)
        + rank
        - repeats * own_train
    )
    rows = np.where(is_test, test_row, train_row)
    both = jax.tree.map(lambda a, b: np.concatenate([a, b]), train.examples, test.examples)
    taken = jax.tree.map(lambda a: a[rows], both)
    return FederatedData.from_arrays(
        x={"inputs": taken["x"], TEST_FLAG: is_test},
        y=taken["y"],
        client_offsets=np.concatenate([[0], np.cumsum(lengths)]),
        client_ids=train.client_ids,
    )


def personalization_eval_model(model: Model) -> Model:
    """``model`` taking `join_train_test`'s examples (``x = {'inputs': x, 'is_test': bool}``)."""
    return with_example_fields(model, {TEST_FLAG: bool})


def personalization_eval(
    model: Model, fine_tune_optimizer, *, fine_tune_steps: int | None = None
) -> FederatedAlgorithm:
    """Personalization evaluation (TFF's ``build_personalization_eval``) as a `FederatedAlgorithm`.

    Each client scores the broadcast weights on its test examples, fine-tunes
    a copy on its train examples and scores the copy (module docstring). Run
    it on ``personalization_eval_model(model)`` (the flag of `join_train_test`'s
    examples), unshuffled, with ``epochs=1``: `build_personalization_eval` does.

    Args:
      model: from `from_keras_model` (the plain one, not extended).
      fine_tune_optimizer: the fine-tuning optimizer.
      fine_tune_steps: the most fine-tuning steps per client (None: one per
        batch holding train examples).

    Example:
      >>> process = FederatedProcess(personalization_eval_model(model),
      ...                            personalization_eval(model, optax.sgd(0.05)), shuffle=False)
    """
    require_model(model)
    max_steps = None if fine_tune_steps is None else check_count(fine_tune_steps, "fine_tune_steps")
    template = model.initial_weights.trainable
    opt = as_optimizer(fine_tune_optimizer, template, argument="fine_tune_optimizer")
    fine_tune = training_step(model, opt)

    def start(broadcast, client_state):
        zero = jnp.zeros((), jnp.int32)
        return (
            start_training(model, opt, broadcast.model),
            empty_sums(model),
            empty_sums(model),
            zero,
        )

    def step(carry, batch, key, broadcast, client_state):
        train, before, after, num_train = carry
        plain, fields = split_example_fields(batch)
        mask = jnp.asarray(plain["mask"], bool)
        on_train = mask & ~fields[TEST_FLAG]
        may_step = True if max_steps is None else train.num_steps < max_steps
        train = fine_tune(train, {**plain, "mask": on_train & may_step}, key, broadcast, ())
        scored = {**plain, "mask": (mask & fields[TEST_FLAG]).astype(jnp.float32)}
        return (
            train,
            add_batch(model, before, broadcast.model, scored),
            add_batch(model, after, train.weights, scored),
            num_train + jnp.sum(on_train).astype(jnp.int32),
        )

    def finish(carry, broadcast, client_state) -> ClientOutput:
        train, before, after, num_train = carry
        return ClientOutput.from_training(
            before,
            {"before": before, "after": after},
            before.num_examples.astype(jnp.float32),
            report={
                "before": finalize_sums(model, before),
                "after": finalize_sums(model, after),
                "num_examples": before.num_examples,
                "num_train_examples": num_train,
                "fine_tune_steps": train.num_steps,
            },
        )

    def server_update(state, aggregate, key):
        del key
        metrics = finalize_sums(model, aggregate["before"], "before/")
        metrics.update(finalize_sums(model, aggregate["after"], "after/"))
        return state, metrics

    return FederatedAlgorithm(
        name="personalization_eval",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: ((), ()),
        server_update=server_update,
        aggregator=sum_aggregator(),
    )


def build_personalization_eval(
    model: Model,
    fine_tune_optimizer,
    *,
    fine_tune_steps: int | None = None,
    percentiles=PERCENTILES,
    **engine_options,
) -> FederatedProcess:
    """Per-client metrics before and after local fine-tuning (TFF's ``build_personalization_eval``).

    Its cohorts come from `join_train_test`. Use
    ``process.set_model_weights(process.initialize(), weights)`` to evaluate
    trained weights; the state never changes but for its round counter.

    Args:
      model: from `from_keras_model` (not yet extended: the process extends it).
      fine_tune_optimizer: the fine-tuning optimizer (anything
        `build_weighted_fed_avg` accepts as a client optimizer).
      fine_tune_steps: the most fine-tuning steps per client (None: one per
        batch holding train examples).
      percentiles: percentiles of the per-client metrics added to the round's
        metrics (see `client_percentiles`), over the clients with test examples.
      **engine_options: batch_size, chunk_size, step_buckets, runner, ...;
        ``shuffle`` must stay False and ``epochs`` 1.

    Returns:
      A `FederatedProcess` whose round metrics are ``loss`` and the model's
      metrics before fine-tuning (as `build_fed_eval` on the test splits),
      ``before/<name>`` and ``after/<name>`` (summed over the cohort's test
      examples, then finalized), per client ``clients/before/<name>``,
      ``clients/after/<name>``, ``clients/num_examples`` (test examples),
      ``clients/num_train_examples`` and ``clients/fine_tune_steps``, and
      ``per_client/before/<name>/p50``, ``per_client/after/<name>/mean``, ...

    Raises:
      ValueError: ``shuffle=True`` or ``epochs`` other than 1.

    Example:
      >>> evaluate = build_personalization_eval(model, optax.sgd(0.05), fine_tune_steps=5,
      ...                                       batch_size=10)
      >>> state = evaluate.set_model_weights(evaluate.initialize(), trained_weights)
      >>> out = evaluate.next(state, join_train_test(*data.train_test_split(0.25, seed=0)))
    """
    require_model(model)
    if engine_options.get("shuffle", False) is not False:
        raise ValueError(
            "build_personalization_eval reads each client's train examples before its test "
            "examples, so shuffle must be False; received shuffle="
            f"{engine_options['shuffle']!r}. Shuffle the data itself beforehand if needed."
        )
    if engine_options.get("epochs", 1) != 1:
        raise ValueError(
            f"epochs must be 1 (received {engine_options['epochs']!r}); for more fine-tuning "
            "epochs use join_train_test(train, test, train_repeats=E)."
        )
    options = add_host_metric(
        {**engine_options, "shuffle": False}, client_percentiles(percentiles=percentiles)
    )
    algorithm = personalization_eval(model, fine_tune_optimizer, fine_tune_steps=fine_tune_steps)
    return FederatedProcess(personalization_eval_model(model), algorithm, **options)
