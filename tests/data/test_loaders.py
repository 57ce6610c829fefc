"""Tests for the loaders (data/_tff_h5.py, _leaf_json.py, _preprocess.py) on files in tmp_path."""

import builtins
import inspect
import json

import numpy as np
import pytest

from fedjax_keras.data import (
    SHAKESPEARE_CHAR_VOCAB,
    SHAKESPEARE_VOCAB_SIZE,
    emnist_preprocess,
    iter_leaf_json_clients,
    iter_tff_h5_clients,
    load_leaf_json,
    load_tff_h5,
    shakespeare_char_ids,
    shakespeare_preprocess,
)

h5py = pytest.importorskip("h5py")


def _emnist_clients(num_clients=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"f{c:04d}_{c}": {
            "pixels": rng.random((c + 2, 28, 28), dtype=np.float32),
            "label": rng.integers(0, 62, c + 2).astype(np.int32),
        }
        for c in range(num_clients)
    }


def _write_tff_h5(path, clients):
    """TFF's layout: examples/<client_id>/<feature> datasets."""
    with h5py.File(path, "w") as f:
        for client_id, features in clients.items():
            for name, value in features.items():
                dtype = h5py.string_dtype() if value.dtype == object else None
                f.create_dataset(f"examples/{client_id}/{name}", data=value, dtype=dtype)
    return path


@pytest.fixture
def emnist_h5(tmp_path):
    clients = _emnist_clients()
    return _write_tff_h5(tmp_path / "emnist.h5", clients), clients


def _client_arrays(data, position):
    offsets = np.asarray(data.client_offsets)
    rows = slice(offsets[position], offsets[position + 1])
    return data.examples["x"][rows], data.examples["y"][rows]


# ----------------------------------------------------------------------------- TFF HDF5


def test_iter_tff_h5_yields_every_feature_as_written(emnist_h5):
    path, clients = emnist_h5
    seen = list(iter_tff_h5_clients(path))
    assert [client_id for client_id, _ in seen] == sorted(clients)
    for client_id, features in seen:
        assert sorted(features) == ["label", "pixels"]
        for name, value in features.items():
            assert value.dtype == clients[client_id][name].dtype
            np.testing.assert_array_equal(value, clients[client_id][name])


def test_load_tff_h5_raw_keys(emnist_h5):
    path, clients = emnist_h5
    data = load_tff_h5(path)
    assert list(data.client_ids) == sorted(clients)
    for position, client_id in enumerate(sorted(clients)):
        x, y = _client_arrays(data, position)
        np.testing.assert_array_equal(x, clients[client_id]["pixels"])
        np.testing.assert_array_equal(y, clients[client_id]["label"])


def test_load_tff_h5_emnist_preprocess_and_selection(emnist_h5):
    path, clients = emnist_h5
    wanted = sorted(clients)[2::-2]  # the last client, then the first
    data = load_tff_h5(path, preprocess=emnist_preprocess, client_ids=wanted)
    assert list(data.client_ids) == wanted
    for position, client_id in enumerate(wanted):
        x, y = _client_arrays(data, position)
        assert x.dtype == np.float32 and x.shape[1:] == (28, 28, 1)
        assert y.dtype == np.int32
        np.testing.assert_array_equal(x[..., 0], clients[client_id]["pixels"])
        np.testing.assert_array_equal(y, clients[client_id]["label"])
    assert load_tff_h5(path, max_clients=2).num_clients == 2


def test_load_tff_h5_shakespeare_strings(tmp_path):
    snippets = {
        "THE_TRAGEDY_OF_KING_LEAR_KING": np.array([b"Nothing will come of nothing.", b"Speak!"]),
        "HAMLET_HAMLET": np.array([b"To be, or not to be"], dtype=object),
    }
    path = _write_tff_h5(
        tmp_path / "shakespeare.h5",
        {cid: {"snippets": np.array(list(s), dtype=object)} for cid, s in snippets.items()},
    )
    raw = dict(iter_tff_h5_clients(path))
    for client_id, expected in snippets.items():
        assert list(raw[client_id]["snippets"]) == list(expected)
    data = load_tff_h5(path, preprocess=shakespeare_preprocess)
    for position, client_id in enumerate(data.client_ids):
        x, y = _client_arrays(data, position)
        want_x, want_y = shakespeare_char_ids(snippets[client_id])
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(y, want_y)


def test_iter_tff_h5_streams_one_client_at_a_time(tmp_path):
    # The second client lacks 'label': a reader that loaded the whole file up
    # front would fail before yielding the first client.
    clients = _emnist_clients(2)
    del clients["f0001_1"]["label"]
    path = _write_tff_h5(tmp_path / "partial.h5", clients)
    stream = iter_tff_h5_clients(path, features=["pixels", "label"])
    assert inspect.isgenerator(stream)
    client_id, features = next(stream)
    assert client_id == "f0000_0"
    np.testing.assert_array_equal(features["pixels"], clients["f0000_0"]["pixels"])
    with pytest.raises(KeyError, match=r"'f0001_1'.*partial\.h5.*no feature 'label'"):
        next(stream)
    # max_clients stops before the broken client is ever read.
    assert load_tff_h5(path, max_clients=1).num_clients == 1


def test_tff_h5_errors_name_file_and_key(tmp_path, emnist_h5):
    path, _ = emnist_h5
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        load_tff_h5(tmp_path / "missing.h5")
    with pytest.raises(KeyError, match="no feature 'image'.*'label', 'pixels'"):
        load_tff_h5(path, x_key="image")
    with pytest.raises(KeyError, match="'nobody'.*emnist.h5"):
        iter_tff_h5_clients(path, client_ids=["nobody"])
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f.create_dataset("pixels", data=np.zeros(3))
    with pytest.raises(KeyError, match=r"flat\.h5 has no 'examples' group"):
        load_tff_h5(tmp_path / "flat.h5")
    with pytest.raises(ValueError, match="max_clients"):
        load_tff_h5(path, max_clients=0)
    with pytest.raises(ValueError, match="'x' and 'y'.*f0000_0"):
        load_tff_h5(path, preprocess=lambda client: {"x": client["pixels"]})


def test_missing_h5py_says_how_to_install(monkeypatch, emnist_h5):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install h5py"):
        load_tff_h5(emnist_h5[0])


# ----------------------------------------------------------------------------- LEAF JSON


def _leaf_blob(users):
    return {
        "users": list(users),
        "num_samples": [len(d["y"]) for d in users.values()],
        "user_data": users,
    }


def _femnist_users(prefix, count, seed):
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}_{u}": {
            # float32 values survive the JSON round trip exactly.
            "x": rng.random((u + 1, 784), dtype=np.float32).tolist(),
            "y": rng.integers(0, 62, u + 1).tolist(),
        }
        for u in range(count)
    }


def _assert_leaf_matches(data, users):
    assert list(data.client_ids) == list(users)
    for position, user in enumerate(users):
        x, y = _client_arrays(data, position)
        assert x.dtype == np.float32 and y.dtype == np.int32
        np.testing.assert_array_equal(x, np.array(users[user]["x"], np.float32))
        np.testing.assert_array_equal(y, users[user]["y"])


def test_load_leaf_json_file(tmp_path):
    users = _femnist_users("f0", 3, seed=0)
    path = tmp_path / "all_data_0.json"
    path.write_text(json.dumps(_leaf_blob(users)))
    _assert_leaf_matches(load_leaf_json(path), users)


def test_load_leaf_json_directory_streams_file_by_file(tmp_path):
    first, second = _femnist_users("a", 2, seed=0), _femnist_users("b", 3, seed=1)
    (tmp_path / "all_data_0.json").write_text(json.dumps(_leaf_blob(first)))
    (tmp_path / "all_data_1.json").write_text(json.dumps(_leaf_blob(second)))
    (tmp_path / "notes.txt").write_text("not json")
    _assert_leaf_matches(load_leaf_json(tmp_path), {**first, **second})
    stream = iter_leaf_json_clients(tmp_path)
    assert inspect.isgenerator(stream)
    assert next(stream)[0] == "a_0"
    # Break the second file after the first was read: only a lazy reader gets this far.
    (tmp_path / "all_data_1.json").write_text("{broken")
    assert next(stream)[0] == "a_1"
    with pytest.raises(json.JSONDecodeError):
        next(stream)


def test_load_leaf_json_preprocess_gets_raw_lists(tmp_path):
    users = {"ROMEO": {"x": ["To be", "or no"], "y": ["o", "t"]}}
    path = tmp_path / "shakespeare.json"
    path.write_text(json.dumps(_leaf_blob(users)))

    def to_ids(client):
        assert client == users["ROMEO"]
        x = np.array([[SHAKESPEARE_CHAR_VOCAB.index(c) + 1 for c in s] for s in client["x"]])
        return {"x": x, "y": np.array([SHAKESPEARE_CHAR_VOCAB.index(c) + 1 for c in client["y"]])}

    data = load_leaf_json(path, preprocess=to_ids)
    np.testing.assert_array_equal(data.examples["y"], [24, 5])  # o=24, t=5


def test_leaf_errors_name_file_and_user(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_leaf_json(tmp_path / "nowhere.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .json file"):
        load_leaf_json(empty)
    blob = _leaf_blob(_femnist_users("u", 2, seed=0))
    blob["num_samples"][1] += 1
    path = tmp_path / "bad_counts.json"
    path.write_text(json.dumps(blob))
    with pytest.raises(ValueError, match=r"bad_counts\.json: user 'u_1' has num_samples 3 but 2"):
        load_leaf_json(path)
    del blob["user_data"]
    path = tmp_path / "no_data.json"
    path.write_text(json.dumps(blob))
    with pytest.raises(KeyError, match=r"no_data\.json has no 'user_data'"):
        load_leaf_json(path)
    blob = _leaf_blob(_femnist_users("u", 1, seed=0))
    (tmp_path / "dup").mkdir()
    for name in ("0.json", "1.json"):
        (tmp_path / "dup" / name).write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="'u_0'.*twice"):
        load_leaf_json(tmp_path / "dup")


# ----------------------------------------------------------------------------- preprocessing


def test_shakespeare_char_ids_hand_computed():
    # T=12 o=24 ' '=14 b=42 e=65; BOS 88, EOS 89, pad 0; rows of seq_len + 1 = 5.
    x, y = shakespeare_char_ids(["To be", b""], seq_len=4)
    np.testing.assert_array_equal(x, [[88, 12, 24, 14], [65, 89, 0, 0], [88, 89, 0, 0]])
    np.testing.assert_array_equal(y, [[12, 24, 14, 42], [89, 0, 0, 0], [89, 0, 0, 0]])
    assert x.dtype == y.dtype == np.int32


def test_shakespeare_char_ids_vocabulary_and_oov():
    assert SHAKESPEARE_VOCAB_SIZE == 90 and len(SHAKESPEARE_CHAR_VOCAB) == 86
    x, _ = shakespeare_char_ids([SHAKESPEARE_CHAR_VOCAB, "~é"], seq_len=200)
    np.testing.assert_array_equal(x[0, 1:87], np.arange(1, 87))
    # '~' is not in the vocabulary, 'é' is two UTF-8 bytes: three OOV ids.
    np.testing.assert_array_equal(x[1, :5], [88, 87, 87, 87, 89])
    assert x.max() < SHAKESPEARE_VOCAB_SIZE and shakespeare_char_ids([], 80)[0].shape == (0, 80)
    with pytest.raises(ValueError, match="seq_len"):
        shakespeare_char_ids(["a"], seq_len=0)


def test_preprocess_hooks_name_missing_features():
    with pytest.raises(KeyError, match="'label'"):
        emnist_preprocess({"pixels": np.zeros((1, 28, 28))})
    with pytest.raises(KeyError, match="'snippets'"):
        shakespeare_preprocess({"text": np.array([b"a"])})


# ----------------------------------------------------------------------------- malformed files


def test_leaf_malformed_json_names_the_file(tmp_path):
    (tmp_path / "0.json").write_text(json.dumps(_leaf_blob(_femnist_users("a", 1, seed=0))))
    (tmp_path / "1.json").write_text('{"users": ["b"], "num_samples": [1], "user_data": {"b"')
    with pytest.raises(json.JSONDecodeError, match=r"1\.json is not valid JSON .*line 1"):
        load_leaf_json(tmp_path)
    (tmp_path / "1.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"1\.json is not UTF-8 text"):
        load_leaf_json(tmp_path)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"users": "u_0"}, r"'users' must be a list of user ids; received a string: 'u_0'"),
        ({"num_samples": 1}, r"'num_samples' must be a list of ints >= 0; received an int: 1"),
        ({"num_samples": ["1"]}, r"'num_samples' must be a list of ints >= 0"),
        ({"user_data": []}, r"'user_data' must map user ids to their data; received a list"),
        ({"users": [["u_0"]]}, r"user id \['u_0'\] is a list; expected a string"),
        ({"user_data": {"u_0": [1, 2]}}, r"user_data\['u_0'\] must be .*; received a list"),
        ({"user_data": {"u_0": {"x": 3, "y": [1]}}}, r"user_data\['u_0'\]\['x'\] must be a list"),
    ],
)
def test_leaf_malformed_structure_names_file_and_user(tmp_path, change, expected):
    blob = {**_leaf_blob(_femnist_users("u", 1, seed=0)), **change}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(blob))
    with pytest.raises(ValueError, match=r"bad\.json: " + expected):
        load_leaf_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad\.json holds a list; expected a LEAF object"):
        load_leaf_json(path)


def test_leaf_user_missing_from_users_is_skipped_with_a_warning(tmp_path):
    users = _femnist_users("u", 2, seed=0)
    blob = _leaf_blob({"u_0": users["u_0"]})
    blob["user_data"]["u_1"] = users["u_1"]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(blob))
    with pytest.warns(
        UserWarning,
        match=r"train\.json: user 'u_1' is in user_data but not in "
        r"'users'; it is skipped",
    ):
        data = load_leaf_json(path)
    assert list(data.client_ids) == ["u_0"]


def test_tff_h5_ragged_clients_name_file_and_client(tmp_path):
    clients = _emnist_clients(3)
    clients["f0001_1"]["pixels"] = clients["f0001_1"]["pixels"][:, :, :27]
    path = _write_tff_h5(tmp_path / "ragged.h5", clients)
    with pytest.raises(
        ValueError, match=r"ragged\.h5: client 'f0001_1': .*\[3, 28, 27\]; expected \[n, 28, 28\]"
    ):
        load_tff_h5(path, preprocess=emnist_preprocess)
    with pytest.raises(ValueError, match=r"ragged\.h5: .*'f0001_1'"):
        load_tff_h5(path)  # raw arrays: the per-example shapes differ
    clients = _emnist_clients(3)
    clients["f0002_2"]["label"] = clients["f0002_2"]["label"][:-1]
    path = _write_tff_h5(tmp_path / "short_labels.h5", clients)
    with pytest.raises(
        ValueError, match=r"short_labels\.h5: client 'f0002_2': .*4 images but 3 labels"
    ):
        load_tff_h5(path, preprocess=emnist_preprocess)


def test_emnist_preprocess_scales_uint8_pixels_like_tff_floats(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    clients = {
        "bytes": {"pixels": raw, "label": np.arange(4, dtype=np.int32)},
        "floats": {"pixels": raw.astype(np.float32) / 255, "label": np.arange(4, dtype=np.int32)},
    }
    data = load_tff_h5(_write_tff_h5(tmp_path / "mixed.h5", clients), preprocess=emnist_preprocess)
    x_bytes, _ = _client_arrays(data, 0)
    x_floats, _ = _client_arrays(data, 1)
    assert x_bytes.dtype == np.float32 and x_bytes.max() <= 1.0
    np.testing.assert_allclose(x_bytes, x_floats, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "pixels, expected",
    [
        (np.full((1, 28, 28), 200, np.int64), r"int64 pixels are ambiguous"),
        (np.full((1, 28, 28), 200.0, np.float32), r"float pixels must lie in \[0, 1\]"),
        (
            np.zeros((1, 28, 27), np.float32),
            r"pixels of shape \[1, 28, 27\]; expected \[n, 28, 28\]",
        ),
    ],
)
def test_emnist_preprocess_refuses_pixels_it_cannot_scale(pixels, expected):
    with pytest.raises(ValueError, match=expected):
        emnist_preprocess({"pixels": pixels, "label": np.zeros(1, np.int32)})
    flat = emnist_preprocess({"pixels": np.zeros((1, 784), np.uint8), "label": np.zeros(1)})
    assert flat["x"].shape == (1, 28, 28, 1)  # LEAF FEMNIST's flat rows are accepted
