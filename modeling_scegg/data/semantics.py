"""Class semantics and the dataset bundle every source produces, with the checks they share.

Whatever the source (xlsa17 files, a Hub dataset, images, the synthetic generator), the model
needs the same things: the class attribute matrix, which classes are seen and unseen, and the
attribute word vectors. Deriving and checking them in one place means a broken split (a class
both seen and unseen, a class without images, word vectors for a different attribute set) is
reported the same way, by field and shape, for every source.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from safetensors.numpy import load_file, save_file

from ..atomic import atomic_path, atomic_write_text
from .store import region_shape

SEMANTICS_ARRAYS = "semantics.safetensors"
SEMANTICS_JSON = "semantics.json"
# The splits every source provides, and the two that exist when a validation split is defined.
REQUIRED_SPLITS = ("train", "test_seen", "test_unseen")
VALIDATION_SPLITS = ("train_sub", "val")


@dataclass
class ClassTable:
    """A source's class file as read, before the splits say which classes are seen: the class
    names in label order and their (C, A) attributes as the source gives them, with what the
    source adds where it has it (values on their own scale, attribute names, unseen flags)."""

    class_names: list[str]
    attributes: np.ndarray
    original_attributes: np.ndarray | None = None
    attribute_names: list[str] | None = None
    is_unseen: np.ndarray | None = None


@dataclass
class ClassSemantics:
    """Everything the model needs to know about the classes, in the model's orientation (C, A)."""

    attributes: np.ndarray
    original_attributes: np.ndarray | None
    class_names: list[str]
    seen_class_ids: np.ndarray
    unseen_class_ids: np.ndarray
    word_vectors: np.ndarray | None
    attribute_names: list[str] | None
    val_class_ids: np.ndarray | None = None
    # the sentence encoder that embedded the attribute names when the source had no word vectors
    attribute_encoder: str | None = None

    @property
    def num_classes(self) -> int:
        return int(self.attributes.shape[0])

    @property
    def num_attributes(self) -> int:
        return int(self.attributes.shape[1])

    @property
    def word_dim(self) -> int | None:
        return None if self.word_vectors is None else int(self.word_vectors.shape[1])

    def save(self, folder: str | os.PathLike) -> None:
        """Arrays as safetensors and names as JSON: nothing that needs unpickling to read back."""
        folder = Path(folder)
        arrays = {
            "attributes": self.attributes,
            "seen_class_ids": self.seen_class_ids,
            "unseen_class_ids": self.unseen_class_ids,
        }
        optional = {
            "original_attributes": self.original_attributes,
            "word_vectors": self.word_vectors,
            "val_class_ids": self.val_class_ids,
        }
        arrays.update({k: v for k, v in optional.items() if v is not None})
        with atomic_path(folder / SEMANTICS_ARRAYS) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        names = {"class_names": self.class_names, "attribute_names": self.attribute_names}
        atomic_write_text(folder / SEMANTICS_JSON, json.dumps(names, indent=1))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ClassSemantics":
        folder = Path(folder)
        arrays = load_file(str(folder / SEMANTICS_ARRAYS))
        names = json.loads((folder / SEMANTICS_JSON).read_text(encoding="utf-8"))
        return cls(
            attributes=arrays["attributes"],
            original_attributes=arrays.get("original_attributes"),
            class_names=list(names["class_names"]),
            seen_class_ids=arrays["seen_class_ids"],
            unseen_class_ids=arrays["unseen_class_ids"],
            word_vectors=arrays.get("word_vectors"),
            attribute_names=names.get("attribute_names"),
            val_class_ids=arrays.get("val_class_ids"),
        )


@dataclass
class ZSLDataset:
    """The splits (memory-mapped Arrow) plus the class semantics of one zero-shot benchmark."""

    name: str
    splits: DatasetDict
    semantics: ClassSemantics
    # the backbone that computed the region features ("sha256:..."), when the source says
    feature_backbone: str | None = None
    feature_backbone_name: str | None = None  # its Hub id or file name, when the source says

    @property
    def num_regions(self) -> int:
        return region_shape(self.splits["train"].features)[0]

    @property
    def feature_dim(self) -> int:
        return region_shape(self.splits["train"].features)[1]


def l2_normalize_rows(matrix: np.ndarray, source: str, field: str, row_names: list[str] | None = None) -> np.ndarray:
    """Unit-norm class vectors (what xlsa17 `att` holds); a zero row cannot be normalised and is
    refused by row (and by class name, where `row_names` gives them)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0).any():
        rows = np.flatnonzero(norms[:, 0] == 0).tolist()
        named = f" (classes {[row_names[i] for i in rows[:10]]})" if row_names is not None else ""
        raise ValueError(f"{source}: field '{field}' has all-zero class vectors at rows {rows[:10]}{named}")
    return (matrix / norms).astype(np.float32)


def check_matrix(matrix: object, source: str, field: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """A finite, non-empty real matrix of the expected shape (None = any size) as float32, or an
    error naming the source, the field and the shape expected: the one check of every matrix a
    source gives (class attributes, word vectors)."""
    if not isinstance(matrix, (np.ndarray, list, tuple)):
        raise ValueError(f"{source}: field '{field}' must be a numeric array, got {type(matrix).__name__}")
    matrix = np.asarray(matrix)
    if matrix.dtype.kind not in "fiu":
        raise ValueError(f"{source}: field '{field}' must be numeric, got dtype {matrix.dtype}")
    if matrix.ndim != len(shape) or 0 in matrix.shape or any(e is not None and e != r for e, r in zip(shape, matrix.shape)):
        expected = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
        raise ValueError(f"{source}: field '{field}' must have shape {expected}, got {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{source}: field '{field}' contains NaN or Inf values")
    return np.array(matrix, dtype=np.float32, order="C")  # a copy: callers keep their array


def attribute_values(cells: list[str], where: str, name: str) -> list[float]:
    """One class's attribute values from the cells of a class file's row (the image folder's
    class file, add-classes' file), refused by line and class when not finite numbers."""
    try:
        numbers = [float(cell) for cell in cells]
    except ValueError as error:
        raise ValueError(f"{where} (class {name!r}): attribute values must be numbers: {error}") from error
    if not np.isfinite(numbers).all():
        raise ValueError(f"{where} (class {name!r}): attribute values must be finite")
    return numbers


def _ids(labels: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(labels, dtype=np.int64))


def _named(ids, class_names: list[str], limit: int = 8) -> str:
    ids = list(ids)
    shown = ", ".join(f"{i} ({class_names[i]})" for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _seen_and_unseen(split_labels: dict[str, np.ndarray], class_names: list[str], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Seen (trainval) and unseen (test_unseen) class ids, after checking that the splits exist,
    hold valid labels and partition the classes as a ZSL benchmark must."""
    num_classes = len(class_names)
    missing = [s for s in REQUIRED_SPLITS if s not in split_labels]
    if missing:
        raise ValueError(f"{source}: missing splits {missing}, expected {list(REQUIRED_SPLITS)}")
    for split, labels in split_labels.items():
        labels = np.asarray(labels)
        if len(labels) == 0:
            raise ValueError(f"{source}: split '{split}' has no images")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"{source}: labels of split '{split}' must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
            )
    seen, unseen = _ids(split_labels["train"]), _ids(split_labels["test_unseen"])
    both = np.intersect1d(seen, unseen)
    if len(both):
        raise ValueError(f"{source}: classes {_named(both, class_names)} occur in both trainval (seen) and test_unseen")
    stray = np.setdiff1d(_ids(split_labels["test_seen"]), seen)
    if len(stray):
        raise ValueError(f"{source}: test_seen holds classes {_named(stray, class_names)} that have no trainval images")
    without_images = np.setdiff1d(np.arange(num_classes), np.union1d(seen, unseen))
    if len(without_images):
        raise ValueError(
            f"{source}: classes {_named(without_images, class_names)} have no images in trainval or test_unseen "
            f"(expected every one of the {num_classes} classes to be seen or unseen)"
        )
    return seen, unseen


def build_semantics(
    *,
    attributes: np.ndarray,
    original_attributes: np.ndarray | None,
    class_names: list[str],
    split_labels: dict[str, np.ndarray],
    word_vectors: np.ndarray | None,
    attribute_names: list[str] | None,
    source: str,
) -> ClassSemantics:
    """Derive seen/unseen/val classes from the split labels and check the whole class structure.

    Seen classes are the labels of trainval ("train") and unseen those of test_unseen, as in
    xlsa17; ``attributes`` (C, A) is L2-normalised per class here whatever the source gave.
    """
    attributes = check_matrix(attributes, source, "attributes", (None, None))
    num_classes, num_attributes = attributes.shape
    if len(class_names) != num_classes:
        raise ValueError(
            f"{source}: {len(class_names)} class names for {num_classes} classes in the attribute matrix "
            f"(C, A) = {attributes.shape}"
        )
    if original_attributes is not None:
        original_attributes = check_matrix(original_attributes, source, "original_attributes", attributes.shape)
    if word_vectors is not None:
        word_vectors = check_matrix(word_vectors, source, "word_vectors", (None, None))
        if word_vectors.shape[0] != num_attributes:
            raise ValueError(
                f"{source}: word vectors have {word_vectors.shape[0]} rows (shape {word_vectors.shape}) but the "
                f"attribute matrix has A = {num_attributes} attributes (shape {attributes.shape})"
            )
    if attribute_names is not None and len(attribute_names) != num_attributes:
        raise ValueError(f"{source}: {len(attribute_names)} attribute names for A = {num_attributes} attributes")
    seen, unseen = _seen_and_unseen(split_labels, class_names, source)
    return ClassSemantics(
        attributes=l2_normalize_rows(attributes, source, "attributes"),
        original_attributes=original_attributes,
        class_names=list(class_names),
        seen_class_ids=seen,
        unseen_class_ids=unseen,
        word_vectors=word_vectors,
        attribute_names=None if attribute_names is None else list(attribute_names),
        val_class_ids=_validation_classes(split_labels, seen, class_names, source),
    )


def _validation_classes(
    split_labels: dict[str, np.ndarray], seen: np.ndarray, class_names: list[str], source: str
) -> np.ndarray | None:
    """Classes of the pseudo-unseen val split; they must be seen classes absent from train_sub."""
    present = [s for s in VALIDATION_SPLITS if s in split_labels]
    if not present:
        return None
    if len(present) != len(VALIDATION_SPLITS):
        raise ValueError(f"{source}: validation needs both splits {list(VALIDATION_SPLITS)}, got only {present}")
    val, train_sub = _ids(split_labels["val"]), _ids(split_labels["train_sub"])
    both = np.intersect1d(val, train_sub)
    if len(both):
        raise ValueError(f"{source}: classes {_named(both, class_names)} occur in both train_sub and val "
                         "(val classes must be held out)")
    stray = np.setdiff1d(np.union1d(val, train_sub), seen)
    if len(stray):
        raise ValueError(f"{source}: train_sub/val hold classes {_named(stray, class_names)} that are not seen classes")
    return val


def clip_negative(semantics: ClassSemantics) -> ClassSemantics:
    """AWA2 `att` has a few slightly negative entries; clip them to 0 and re-normalise each class."""
    clipped = np.clip(semantics.attributes, 0.0, None)
    attributes = l2_normalize_rows(clipped, "clip_negative_attributes", "attributes")
    return ClassSemantics(**{**semantics.__dict__, "attributes": attributes})
