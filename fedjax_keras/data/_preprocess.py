"""Preprocess hooks for the common TFF data sets: EMNIST, Shakespeare (characters).

Each is a ``preprocess(client_dict) -> {'x': ..., 'y': ...}`` for `load_tff_h5`
and `load_leaf_json`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedjax_keras.data._loaders import ClientDict

# TFF's Shakespeare character vocabulary (tff.simulation.baselines.shakespeare);
# character SHAKESPEARE_CHAR_VOCAB[i] has id i + 1.
SHAKESPEARE_CHAR_VOCAB = (
    "dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r"
)
_PAD = 0
_OOV = len(SHAKESPEARE_CHAR_VOCAB) + 1
_BOS = len(SHAKESPEARE_CHAR_VOCAB) + 2
_EOS = len(SHAKESPEARE_CHAR_VOCAB) + 3
# Ids 0 (pad) .. 89 (end of snippet): the size of a model's embedding table.
SHAKESPEARE_VOCAB_SIZE = len(SHAKESPEARE_CHAR_VOCAB) + 4
# Snippets are split into bytes, as TFF does; bytes outside the ASCII
# vocabulary (parts of non-ASCII characters included) become the OOV id.
_BYTE_TO_ID = np.full(256, _OOV, np.int32)
_BYTE_TO_ID[[ord(c) for c in SHAKESPEARE_CHAR_VOCAB]] = np.arange(
    1, len(SHAKESPEARE_CHAR_VOCAB) + 1, dtype=np.int32
)


def emnist_preprocess(client: ClientDict) -> ClientDict:
    """Maps a TFF EMNIST client to Keras-ready arrays, pixels in [0, 1] whatever their dtype.

    TFF's EMNIST files store float32 pixels in [0, 1]; other copies of the data
    store uint8 pixels in 0..255. Pixels are scaled by their dtype, so clients of
    both kinds can share a population: uint8 is divided by 255, floats are kept
    (and must lie in [0, 1]). Other integer dtypes are refused: from the dtype
    alone, 0..1 and 0..255 cannot be told apart, so cast them first.

    Args:
      client: `{'pixels': [n, 28, 28] (or LEAF's [n, 784]) float in [0, 1] or
        uint8 in 0..255, 'label': [n] int, ...}`.

    Returns:
      `{'x': [n, 28, 28, 1] float32 in [0, 1], 'y': [n] int32}`.

    Raises:
      KeyError: the client has no 'pixels' or 'label' feature.
      ValueError: pixels of another shape, of an integer dtype other than uint8
        or floats outside [0, 1], or not as many labels as images.

    Example:
      >>> import numpy as np
      >>> out = emnist_preprocess({"pixels": np.zeros((2, 28, 28)), "label": np.array([3, 7])})
      >>> out["x"].shape, out["y"].dtype
      ((2, 28, 28, 1), dtype('int32'))
      >>> emnist_preprocess({"pixels": np.full((1, 28, 28), 255, np.uint8),
      ...                    "label": np.array([0])})["x"].max()
      1.0
    """
    for key in ("pixels", "label"):
        if key not in client:
            raise KeyError(
                f"emnist_preprocess needs TFF EMNIST's {key!r} feature; the client has "
                f"{sorted(client)!r}."
            )
    pixels, labels = np.asarray(client["pixels"]), np.asarray(client["label"])
    if pixels.shape[1:] not in ((28, 28), (784,)):
        raise ValueError(
            f"emnist_preprocess: pixels of shape {list(pixels.shape)}; expected [n, 28, 28] "
            "(or [n, 784])."
        )
    if len(labels) != len(pixels):
        raise ValueError(
            f"emnist_preprocess: {len(pixels)} images but {len(labels)} labels; expected one "
            "label per image."
        )
    if pixels.dtype == np.uint8:
        x = pixels.astype(np.float32) / np.float32(255)
    elif pixels.dtype.kind == "f":
        x = pixels.astype(np.float32)
        if x.size and not (x.min() >= 0 and x.max() <= 1):
            raise ValueError(
                f"emnist_preprocess: float pixels must lie in [0, 1] (TFF's EMNIST); these "
                f"range from {x.min()} to {x.max()}. Store 0..255 pixels as uint8, or divide "
                "them by 255."
            )
    else:
        raise ValueError(
            f"emnist_preprocess: {pixels.dtype} pixels are ambiguous (0..1 or 0..255?); "
            "expected float pixels in [0, 1] or uint8 pixels in 0..255: cast them to one."
        )
    return {"x": x.reshape(len(x), 28, 28, 1), "y": labels.astype(np.int32)}


def shakespeare_char_ids(
    snippets: Iterable[str | bytes], seq_len: int = 80
) -> tuple[np.ndarray, np.ndarray]:
    """Next-character sequences from text snippets, as TFF's Shakespeare baseline.

    Each snippet is split into bytes and mapped to ids: 0 is padding,
    1..86 the characters of `SHAKESPEARE_CHAR_VOCAB` (character i has id i + 1),
    87 out of vocabulary (any other byte), 88 beginning and 89 end of snippet
    (`SHAKESPEARE_VOCAB_SIZE` = 90 ids). The ids `[88, chars..., 89]` are padded
    with 0 to a multiple of seq_len + 1 and cut into rows of seq_len + 1; x is
    each row without its last id, y without its first. Rows never span two
    snippets. Pad positions (id 0) drop out of the loss and metrics when the model's
    first layer is ``keras.layers.Embedding(..., mask_zero=True)``.

    Args:
      snippets: n strings or UTF-8 bytes (TFF's `snippets` feature).
      seq_len: length L of each sequence (80 in McMahan et al. 2017).

    Returns:
      (x [M, L] int32, y [M, L] int32): inputs and next-character targets.

    Example:
      >>> x, y = shakespeare_char_ids(["To be"], seq_len=4)  # T=12 o=24 ' '=14 b=42 e=65
      >>> x.tolist()
      [[88, 12, 24, 14], [65, 89, 0, 0]]
      >>> y.tolist()
      [[12, 24, 14, 42], [89, 0, 0, 0]]
    """
    if not (isinstance(seq_len, (int, np.integer)) and seq_len >= 1):
        raise ValueError(f"seq_len must be an integer >= 1, got {seq_len!r}.")
    encoded = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in snippets]
    row = seq_len + 1
    num_chars = np.array([len(b) for b in encoded], np.int64)
    padded = -(-(num_chars + 2) // row) * row
    starts = np.cumsum(padded) - padded
    tokens = np.zeros(int(padded.sum()), np.int32)
    tokens[starts] = _BOS
    tokens[starts + num_chars + 1] = _EOS
    char_bytes = np.frombuffer(b"".join(encoded), np.uint8)
    # Position of every character: one after its snippet's BOS, then consecutive.
    first_char = np.cumsum(num_chars) - num_chars
    positions = np.repeat(starts + 1 - first_char, num_chars) + np.arange(len(char_bytes))
    tokens[positions] = _BYTE_TO_ID[char_bytes]
    rows = tokens.reshape(-1, row)
    return rows[:, :-1].copy(), rows[:, 1:].copy()


def shakespeare_preprocess(client: ClientDict, seq_len: int = 80) -> ClientDict:
    """Maps a TFF Shakespeare client (`{'snippets': [n] bytes}`) to next-character data.

    Args:
      client: the client's features; only `snippets` is used.
      seq_len: sequence length L (use `functools.partial` to change it).

    Returns:
      `{'x': [M, L] int32, 'y': [M, L] int32}` as `shakespeare_char_ids`.
    """
    if "snippets" not in client:
        raise KeyError(
            "shakespeare_preprocess needs TFF Shakespeare's 'snippets' feature; the client "
            f"has {sorted(client)!r}."
        )
    x, y = shakespeare_char_ids(client["snippets"], seq_len=seq_len)
    return {"x": x, "y": y}
