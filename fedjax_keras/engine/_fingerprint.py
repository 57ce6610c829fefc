"""Noticing a population's arrays changed in place between rounds.

`FederatedData.from_arrays` keeps the user's arrays, not a copy, and a
process keeps what it derived from them between rounds: the device copy of the
population and the label check. After ``x *= 10`` or ``y[:] = 99`` on those
arrays both would be stale. So the process fingerprints the population once
(CRC-32 of every block of about 16 KB of rows of each leaf, about 3 GB/s) and,
every round, hashes again only the cohort's rows: a client's blocks the first
time it is drawn (then the CRC of exactly its rows is recorded), exactly its
rows after that. A round costs O(the cohort's bytes), never O(the
population's). The process checks while the device runs the round; when
anything differs, it re-uploads and re-checks the whole population and runs
the round again.

A change in rows outside the cohort is seen in the first round that samples
one of them, which is the first round it could matter in.
"""

import zlib

import jax
import numpy as np

BLOCK_BYTES = 1 << 14


def _block_rows(leaf: np.ndarray) -> int:
    row_bytes = leaf.nbytes // max(len(leaf), 1)
    return max(1, BLOCK_BYTES // max(row_bytes, 1))


def _crc(leaf: np.ndarray, block: int, rows: int) -> int:
    # A slice of a C-contiguous array is contiguous: hashed in place, no copy.
    return zlib.crc32(memoryview(np.ascontiguousarray(leaf[block * rows : (block + 1) * rows])))


def _blocks_of(starts: np.ndarray, sizes: np.ndarray, rows: int) -> np.ndarray:
    """The distinct blocks of ``rows`` rows that hold rows ``[start, start + size)``."""
    nonempty = sizes > 0
    first = starts[nonempty] // rows
    last = (starts[nonempty] + sizes[nonempty] - 1) // rows
    counts = last - first + 1
    if not len(counts):
        return np.zeros((0,), np.int64)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.unique(np.repeat(first, counts) + offsets)


class SourceFingerprint:
    """The CRC-32 of each block of rows of each leaf of a source, as it was when made.

    Args:
      source: the population's arrays (`FederatedData.source_rows`), leaves [rows, ...].
    """

    def __init__(self, source):
        self._leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(source)]
        self._rows = [_block_rows(leaf) for leaf in self._leaves]
        self._clients: dict = {}  # (first row, rows) -> CRC of each leaf's rows
        self._crcs = [
            np.array([_crc(leaf, b, rows) for b in range(-(-len(leaf) // rows))], dtype=np.uint32)
            for leaf, rows in zip(self._leaves, self._rows)
        ]

    def changed(self, starts, sizes) -> bool:
        """Whether a row of these clients differs from when fingerprinted.

        A client seen before is checked by the CRC of exactly its rows (recorded
        the first time, after its blocks were checked); a new one by its blocks.

        Args:
          starts: int [clients], each client's first source row.
          sizes: int [clients], its number of rows.
        """
        starts = np.asarray(starts, np.int64)
        sizes = np.asarray(sizes, np.int64)
        known = [(int(a), int(n)) in self._clients for a, n in zip(starts, sizes)]
        for (start, size), seen in zip(zip(starts.tolist(), sizes.tolist()), known):
            if seen and self._client_crcs(start, size) != self._clients[(start, size)]:
                return True
        new = ~np.asarray(known, bool)
        for leaf, rows, crcs in zip(self._leaves, self._rows, self._crcs):
            for block in _blocks_of(starts[new], sizes[new], rows):
                if _crc(leaf, int(block), rows) != crcs[block]:
                    return True
        for start, size in zip(starts[new].tolist(), sizes[new].tolist()):
            self._clients[(start, size)] = self._client_crcs(start, size)
        return False

    def _client_crcs(self, start: int, size: int) -> tuple:
        return tuple(
            zlib.crc32(memoryview(np.ascontiguousarray(leaf[start : start + size])))
            for leaf in self._leaves
        )
