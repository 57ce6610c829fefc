"""What a process derives from a round's cohort and keeps between rounds.

A run samples its cohorts from one population, round after round, so three
things are done once per population rather than once per round: checking that
its examples fit the model (once per shape signature), checking its sparse
labels against the model's classes, and copying it to the devices. The last
two are forgotten when the population's arrays are changed in place
(`SourceFingerprint`, checked while the device runs the round, which then runs
again), so no round's result comes from values the arrays no longer hold.
None of it changes a number.
"""

import jax

from fedjax_keras.data import FederatedData
from fedjax_keras.engine._checks import check_cohort_fits, cohort_signature
from fedjax_keras.engine._fingerprint import SourceFingerprint
from fedjax_keras.engine._options import EngineOptions
from fedjax_keras.engine._plan import device_source
from fedjax_keras.models import Model
from fedjax_keras.parallel import Placement

# Each fingerprint keeps its population's arrays referenced (so that the ids that
# key it stay unique): a few, not every population a process ever saw.
_FINGERPRINTS_KEPT = 4
_LABEL_CHECKS_KEPT = 64


def _source_key(source) -> tuple:
    return tuple((id(leaf), leaf.shape) for leaf in jax.tree.leaves(source))


def _labels_key(source) -> tuple:
    return tuple(id(leaf) for leaf in jax.tree.leaves(source["y"]))


class CohortCaches:
    """The checks and the device copy of a process's populations, redone only on change.

    Args:
      model: the process's model.
      options: its `EngineOptions` (data placement and its memory limit).
      placement: its mesh.
    """

    def __init__(self, model: Model, options: EngineOptions, placement: Placement):
        self._model = model
        self._options = options
        self._placement = placement
        self._source = None  # the population's device copy, a SourceCache
        self._fingerprints: dict = {}
        self._fitting_signatures: set = set()
        self._checked_labels: set = set()

    def checked_source(self, cohort: FederatedData):
        """Checks ``cohort`` against the model and returns its source on the devices.

        Returns:
          The cohort's source arrays on the devices (leaves [bucketed rows, ...]),
          or None where the round batches on the host.

        Raises:
          ValueError / TypeError: examples that do not fit the model.
          LabelRangeError: a sparse label out of the model's classes.
        """
        self._check_fits(cohort)
        self._check_labels(cohort)
        source, _ = cohort.source_rows
        on_device, self._source = device_source(
            source,
            self._source,
            data_placement=self._options.data_placement,
            limit_bytes=self._options.data_limit_bytes,
            placement=self._placement,
        )
        return on_device

    def _check_fits(self, cohort: FederatedData) -> None:
        signature = cohort_signature(cohort)
        if signature not in self._fitting_signatures:
            check_cohort_fits(self._model, cohort)
            self._fitting_signatures.add(signature)

    def forget_if_changed(self, cohort: FederatedData) -> bool:
        """Whether the cohort's rows changed in place since `checked_source` vouched for them.

        If they did, the device copy and the label check are dropped (the next
        `checked_source` redoes both) and the source fingerprinted again. The
        first call for a source fingerprints it. The process calls this while
        the device runs the round, so the hashing costs no round time there.
        """
        source, starts = cohort.source_rows
        key = _source_key(source)
        known = self._fingerprints.get(key)
        if known is not None and not known.changed(starts, cohort.client_sizes):
            return False
        if known is not None:
            self._source = None
            self._checked_labels.discard(_labels_key(source))
        self._fingerprints.pop(key, None)
        while len(self._fingerprints) >= _FINGERPRINTS_KEPT:
            self._fingerprints.pop(next(iter(self._fingerprints)))
        self._fingerprints[key] = SourceFingerprint(source)
        return known is not None

    def _check_labels(self, cohort: FederatedData) -> None:
        source, _ = cohort.source_rows
        key = _labels_key(source)
        if key in self._checked_labels:
            return
        self._model.check_labels(cohort)
        if len(self._checked_labels) >= _LABEL_CHECKS_KEPT:
            self._checked_labels.clear()
        self._checked_labels.add(key)
