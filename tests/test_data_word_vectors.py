"""Attribute word vectors: the real pickles load, malicious or malformed files are refused unrun."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from modeling_scegg.data.word_vectors import UnsafePickleError, load_word_vectors, save_word_vectors


@pytest.mark.parametrize("name, shape", [("CUB", (312, 300)), ("SUN", (102, 300)), ("AWA2", (85, 300))])
def test_real_pickles(shared_data: Path, name: str, shape):
    vectors = load_word_vectors(shared_data / "w2v" / f"{name}_attribute.pkl")
    assert vectors.shape == shape and vectors.dtype == np.float32
    assert np.isfinite(vectors).all() and np.abs(vectors).sum() > 0


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(UnsafePickleError, match=r"evil.pkl: refusing to load '(posix|os)\.system'"):
        load_word_vectors(path)
    assert not marker.exists()


def test_array_wrapped_exploit_is_refused(tmp_path: Path):
    """A real array whose pickle also smuggles a callable is refused as a whole."""
    marker = tmp_path / "pwned"
    path = tmp_path / "mixed.pkl"
    path.write_bytes(pickle.dumps([np.ones((2, 3)), _Exploit(marker)]))
    with pytest.raises(UnsafePickleError):
        load_word_vectors(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_arrays_of_every_protocol(tmp_path: Path, protocol: int):
    array = np.random.default_rng(0).standard_normal((4, 6))
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps(array, protocol=protocol))
    np.testing.assert_allclose(load_word_vectors(path), array, rtol=1e-6)


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"a": 1}, "w.pkl: field .word_vectors. must be a numeric array, got dict"),
        (np.array([[1, "x"]], dtype=object), "must be numeric, got dtype object"),
        (np.ones(5), "must have shape \\(\\*, \\*\\), got \\(5,\\)"),
        (np.ones((0, 3)), "must have shape \\(\\*, \\*\\), got \\(0, 3\\)"),
        (np.array([[1.0, np.nan]]), "NaN or Inf"),
    ],
)
def test_malformed_content(tmp_path: Path, obj, message):
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError, match=message):
        load_word_vectors(path)


def test_truncated_pickle(tmp_path: Path):
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps(np.ones((3, 3)))[:30])
    with pytest.raises(ValueError, match="w.pkl: not a readable word-vector pickle"):
        load_word_vectors(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nothing.pkl"):
        load_word_vectors(tmp_path / "nothing.pkl")


def test_unknown_suffix(tmp_path: Path):
    path = tmp_path / "w.txt"
    path.write_text("1 2 3")
    with pytest.raises(ValueError, match="unsupported word-vector format '.txt'"):
        load_word_vectors(path)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_safe_formats_round_trip(tmp_path: Path, suffix: str):
    array = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    path = save_word_vectors(array, tmp_path / f"w{suffix}")
    np.testing.assert_array_equal(load_word_vectors(path), array)
    assert [p.name for p in tmp_path.iterdir()] == [f"w{suffix}"]


def test_npy_with_pickled_objects_is_refused(tmp_path: Path):
    path = tmp_path / "w.npy"
    np.save(path, np.array([[1, "x"]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled object arrays are refused"):
        load_word_vectors(path)


def test_save_refuses_pickle_formats(tmp_path: Path):
    with pytest.raises(ValueError, match=".safetensors or .npy"):
        save_word_vectors(np.ones((2, 2)), tmp_path / "w.pkl")
