"""Attribute word vectors (A, dv): safe loading of the pickles the ZSL community distributes.

The GloVe attribute vectors (``w2v/<DS>_attribute.pkl``) are pickled numpy arrays. Unpickling
runs whatever callables the file names, so a downloaded pickle is untrusted input: the
unpickler here resolves only the handful of numpy names needed to rebuild a plain array and
refuses everything else before it can run. ``.npy`` (without pickle) and ``.safetensors`` are
accepted as safe alternatives, and :func:`save_word_vectors` converts to them.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from ..atomic import atomic_path
from .semantics import check_matrix

WORD_VECTOR_KEY = "word_vectors"
SUFFIXES = (".pkl", ".pickle", ".npy", ".safetensors")

# (module, name) pairs a pickled ndarray needs across numpy 1.x and 2.x; nothing here can run
# arbitrary code: they allocate an array or a dtype from the pickled bytes.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # protocol-2 pickles store the raw bytes as a latin-1 str
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than a plain numpy array; nothing of it was run."""


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays; any other global is refused before use."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to load '{module}.{name}': only plain numpy arrays are accepted in "
            f"word-vector pickles (convert the file to .npy or .safetensors with save_word_vectors)"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed in word-vector pickles")


def _load_pickle(path: Path) -> np.ndarray:
    data = path.read_bytes()
    try:
        return _NumpyArrayUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # truncated/corrupt streams raise UnpicklingError, EOFError, TypeError, ...
        raise ValueError(f"{path}: not a readable word-vector pickle ({type(error).__name__}: {error})") from error


def _load_safetensors(path: Path) -> np.ndarray:
    try:
        tensors = load_file(str(path))
    except Exception as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    if WORD_VECTOR_KEY in tensors:
        return tensors[WORD_VECTOR_KEY]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise ValueError(f"{path}: expected a tensor named '{WORD_VECTOR_KEY}', found {sorted(tensors)}")


def load_word_vectors(path: str | os.PathLike) -> np.ndarray:
    """Load (A, dv) attribute word vectors from .pkl (restricted), .npy (no pickle) or .safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word-vector file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        array = _load_pickle(path)
    elif suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"{path}: not a plain .npy array (pickled object arrays are refused): {error}") from error
    elif suffix == ".safetensors":
        array = _load_safetensors(path)
    else:
        raise ValueError(f"{path}: unsupported word-vector format '{suffix}', expected one of {SUFFIXES}")
    return check_matrix(array, str(path), "word_vectors", (None, None))


def save_word_vectors(word_vectors: np.ndarray, path: str | os.PathLike) -> Path:
    """Write word vectors as .safetensors or .npy (the formats that cannot carry code), atomically."""
    path = Path(path)
    matrix = check_matrix(np.asarray(word_vectors), str(path), "word_vectors", (None, None))
    if path.suffix not in (".safetensors", ".npy"):
        raise ValueError(f"{path}: word vectors are saved as .safetensors or .npy, got '{path.suffix}'")
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file({WORD_VECTOR_KEY: matrix}, str(tmp))
        else:
            with open(tmp, "wb") as handle:
                np.save(handle, matrix, allow_pickle=False)
    return path
