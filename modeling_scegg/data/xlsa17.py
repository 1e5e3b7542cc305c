"""The xlsa17 benchmark files and the common region-feature HDF5, read and cross-checked.

Standard layout under ``data_dir`` (the ``data/`` level of xlsa17 is optional)::

    xlsa17/data/<DS>/att_splits.mat      att (A x C), original_att, allclasses_names, *_loc (1-based)
    xlsa17/data/<DS>/res101.mat          features (D x N), labels (N x 1, 1-based), image_files (optional)
    <DS>/feature_map_ResNet_101_<DS>.hdf5  feature_map (N, D, H, W), labels / *_loc (0-based), att (C x A), ...
    w2v/<DS>_attribute.pkl               attribute word vectors (A, 300) (.npy / .safetensors accepted)

The ZSL community's files mix 1-based MATLAB indices with 0-based Python ones and transpose the
attribute matrix between them, so every field is converted to one convention here (0-based,
classes along rows) and, where two files carry the same information, checked to agree. Region
features are read from the HDF5 a block of images at a time: the CUB map alone is 19 GB.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.io

from ..optional import import_optional
from .semantics import ClassSemantics, ClassTable, build_semantics
from .store import region_feature_features, split_batches, write_split
from .word_vectors import SUFFIXES as WORD_VECTOR_SUFFIXES
from .word_vectors import load_word_vectors

LOC_FIELDS = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")
MAIN_LOC_FIELDS = LOC_FIELDS[:3]
# Blocks of ~64 MiB of float32 feature maps bound the memory used while converting.
_READ_BLOCK_BYTES = 64 * 2**20
_MAX_BLOCK_IMAGES = 4096  # h5py point selections get slow with very many points


@dataclass
class Res101:
    """res101.mat: mean-pooled features (N, D) (may be absent), 0-based labels (N,), image files."""

    features: np.ndarray | None
    labels: np.ndarray
    image_files: list[str] | None


@dataclass
class StandardFiles:
    """Where the files of one benchmark were found (optional ones may be None)."""

    name: str
    att_splits: Path
    region_hdf5: Path
    res101: Path | None
    word_vectors: Path | None


def _loadmat(path: Path, variable_names: list[str] | None = None) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"MATLAB file not found: {path}")
    try:
        return scipy.io.loadmat(str(path), variable_names=variable_names)
    except NotImplementedError as error:  # MATLAB v7.3 files are HDF5 containers
        raise ValueError(f"{path}: MATLAB v7.3 files are not supported, re-save it with -v7 ({error})") from error
    except Exception as error:
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({type(error).__name__}: {error})") from error


def _field(mat: dict, name: str, path: Path) -> np.ndarray:
    if name not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: missing field '{name}' (found: {found})")
    return mat[name]


def _one_based_locs(values: np.ndarray, path: Path, field: str) -> np.ndarray:
    """MATLAB 1-based image indices as 0-based int64, refusing non-integers and zeros."""
    flat = np.asarray(values).reshape(-1)
    if flat.dtype.kind == "f" and not np.array_equal(flat, np.round(flat)):
        raise ValueError(f"{path}: field '{field}' must hold integer image indices, got non-integer values")
    locs = flat.astype(np.int64)
    if len(locs) and locs.min() < 1:
        raise ValueError(f"{path}: field '{field}' holds 1-based indices, expected values >= 1, got minimum {locs.min()}")
    return locs - 1


def _class_names(values: np.ndarray) -> list[str]:
    """MATLAB cell arrays of strings come back as nested object arrays; flatten each to a str."""
    names = []
    for item in np.asarray(values, dtype=object).reshape(-1):
        while isinstance(item, np.ndarray):
            item = item.reshape(-1)[0] if item.size else ""
        names.append(str(item).strip())
    return names


def read_att_splits(path: str | os.PathLike) -> tuple[ClassTable, dict[str, np.ndarray]]:
    """Class attributes/names and the 0-based split indices (keys: the ``*_loc`` fields present).

    ``train_loc``/``val_loc`` are returned as stored; note that in xlsa17 they cover
    trainval AND test_seen images (the loader intersects them with trainval).
    """
    path = Path(path)
    mat = _loadmat(path)
    att = np.asarray(_field(mat, "att", path))
    if att.ndim != 2:
        raise ValueError(f"{path}: field 'att' must be a matrix (A x C), got shape {att.shape}")
    names = _class_names(_field(mat, "allclasses_names", path))
    if len(names) != att.shape[1]:
        raise ValueError(
            f"{path}: field 'allclasses_names' has {len(names)} names, expected C = {att.shape[1]} (columns of 'att' {att.shape})"
        )
    original = mat.get("original_att")
    if original is not None and np.shape(original) != att.shape:
        raise ValueError(f"{path}: field 'original_att' must have the shape of 'att' {att.shape}, got {np.shape(original)}")
    table = ClassTable(
        attributes=att.T.astype(np.float32),
        original_attributes=None if original is None else np.asarray(original).T.astype(np.float32),
        class_names=names,
    )
    locs = {field: _one_based_locs(_field(mat, field, path), path, field) for field in MAIN_LOC_FIELDS}
    locs.update({f: _one_based_locs(mat[f], path, f) for f in LOC_FIELDS[3:] if f in mat})
    return table, locs


def read_res101(path: str | os.PathLike) -> Res101:
    """res101.mat with 1-based (N x 1) labels made 0-based and features as (N, D)."""
    path = Path(path)
    mat = _loadmat(path)
    labels = _one_based_locs(_field(mat, "labels", path), path, "labels")
    features = mat.get("features")
    if features is not None:
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != len(labels):
            raise ValueError(f"{path}: field 'features' must be (D x N) with N = {len(labels)} labels, got {features.shape}")
        features = np.ascontiguousarray(features.T, dtype=np.float32)
        if not np.isfinite(features).all():
            raise ValueError(f"{path}: field 'features' contains NaN or Inf values")
    files = mat.get("image_files")
    return Res101(features=features, labels=labels, image_files=None if files is None else _class_names(files))


class RegionHDF5:
    """The region-feature HDF5 of the common preprocessing, opened for block-wise reading.

    ``feature_map`` is (N, D, H, W) float32; regions are returned as (n, H*W, D) with region
    index h*W + w, the order every ZSL attention model uses.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"region-feature HDF5 not found: {self.path}")
        try:
            h5py = import_optional("h5py", "hdf5", "reading HDF5 region features")
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise ValueError(f"{self.path}: not a readable HDF5 file ({error})") from error
        if "feature_map" not in self._file:
            found = sorted(self._file.keys())
            self.close()
            raise ValueError(f"{self.path}: missing field 'feature_map' (found: {found})")
        self._maps = self._file["feature_map"]
        if self._maps.ndim != 4:
            shape = self._maps.shape
            self.close()
            raise ValueError(f"{self.path}: field 'feature_map' must be (N, D, H, W), got shape {shape}")
        self.num_images, self.feature_dim, height, width = (int(s) for s in self._maps.shape)
        self.num_regions = height * width

    def __enter__(self) -> "RegionHDF5":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_file", None) is not None and self._file.id.valid:
            self._file.close()

    def field(self, name: str) -> np.ndarray | None:
        """A small side field (labels, locs, att, ...) read whole, or None when absent."""
        return np.asarray(self._file[name]) if name in self._file else None

    def block_size(self) -> int:
        return int(np.clip(_READ_BLOCK_BYTES // (self.feature_dim * self.num_regions * 4), 1, _MAX_BLOCK_IMAGES))

    def iter_regions(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        """(n, R, D) float32 region blocks for ascending ``indices``, a bounded block at a time."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) > 1 and not (np.diff(indices) > 0).all():
            raise ValueError("iter_regions needs strictly increasing image indices")
        step = self.block_size()
        for begin in range(0, len(indices), step):
            block = indices[begin : begin + step]
            span = int(block[-1] - block[0]) + 1
            if span <= 2 * len(block):  # dense block: one contiguous read beats h5py point selection
                maps = self._maps[int(block[0]) : int(block[-1]) + 1][block - block[0]]
            else:
                maps = self._maps[block]
            maps = np.asarray(maps, dtype=np.float32).reshape(len(block), self.feature_dim, self.num_regions)
            regions = maps.transpose(0, 2, 1)
            if not np.isfinite(regions).all():
                bad = block[~np.isfinite(regions).all(axis=(1, 2))]
                raise ValueError(f"{self.path}: field 'feature_map' has NaN or Inf values for images {bad[:10].tolist()}")
            yield regions


def read_feature_backbone(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """The backbone a region-feature HDF5 records (``scegg extract`` writes its fingerprint and
    name as attributes), as ``(feature_backbone, feature_backbone_name)``; (None, None) for files
    that do not say, e.g. the authors' own."""
    h5py = import_optional("h5py", "hdf5", "reading HDF5 region features")
    with h5py.File(path, "r") as h5:
        fingerprint, name = h5.attrs.get("feature_backbone"), h5.attrs.get("feature_backbone_name")
    return (None if fingerprint is None else str(fingerprint)), (None if name is None else str(name))


def candidate_files(data_dir: str | os.PathLike, name: str) -> dict[str, list[Path]]:
    """Where each file of benchmark `name` may be under `data_dir` (the layout in the module
    docstring), the preferred place first: the one list every reader and writer of it looks in."""
    data_dir = Path(data_dir)
    return {
        "att_splits": [data_dir / "xlsa17" / "data" / name / "att_splits.mat", data_dir / "xlsa17" / name / "att_splits.mat"],
        "res101": [data_dir / "xlsa17" / "data" / name / "res101.mat", data_dir / "xlsa17" / name / "res101.mat"],
        "region_hdf5": [
            data_dir / name / f"feature_map_ResNet_101_{name}.hdf5",
            data_dir / f"feature_map_ResNet_101_{name}.hdf5",
        ],
        "word_vectors": [data_dir / "w2v" / f"{name}_attribute{suffix}" for suffix in WORD_VECTOR_SUFFIXES],
    }


def find_standard_files(name: str, data_dir: str | os.PathLike) -> StandardFiles:
    """Locate a benchmark's files; att_splits.mat and the region HDF5 are required."""
    data_dir = Path(data_dir)
    found = {key: next((p for p in paths if p.is_file()), None) for key, paths in candidate_files(data_dir, name).items()}
    for required in ("att_splits", "region_hdf5"):
        if found[required] is None:
            tried = ", ".join(str(p) for p in candidate_files(data_dir, name)[required])
            raise FileNotFoundError(f"{name}: no {required} file under {data_dir} (looked for: {tried})")
    return StandardFiles(name=name, **found)


def check_locs(locs: dict[str, np.ndarray], num_images: int, source: str) -> None:
    """Every index in range, no duplicates, and trainval / test_seen / test_unseen disjoint."""
    for field, values in locs.items():
        if len(values) and (values.min() < 0 or values.max() >= num_images):
            raise ValueError(
                f"{source}: field '{field}' has image indices in [{values.min()}, {values.max()}] (0-based), "
                f"expected [0, {num_images}) for N = {num_images} images"
            )
        if len(np.unique(values)) != len(values):
            raise ValueError(f"{source}: field '{field}' lists {len(values) - len(np.unique(values))} images twice")
    pairs = [(a, b) for i, a in enumerate(MAIN_LOC_FIELDS) for b in MAIN_LOC_FIELDS[i + 1 :]]
    if "train_loc" in locs and "val_loc" in locs:
        pairs.append(("train_loc", "val_loc"))
    for a, b in pairs:
        shared = np.intersect1d(locs[a], locs[b])
        if len(shared):
            raise ValueError(
                f"{source}: splits '{a}' and '{b}' overlap in {len(shared)} images (0-based, e.g. {shared[:5].tolist()})"
            )


def check_agree(name: str, ours: np.ndarray, theirs: np.ndarray | None, where: str, other: str) -> None:
    """Two files carrying the same field must agree (shape and values)."""
    if theirs is None:
        return
    theirs = np.asarray(theirs)
    if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=1e-4, atol=1e-6):
        raise ValueError(
            f"field '{name}' differs between {where} (shape {ours.shape}) and {other} (shape {theirs.shape}); "
            "the files do not belong to the same dataset version"
        )


def _checked_labels(h5: RegionHDF5, res: Res101 | None, files: StandardFiles) -> np.ndarray:
    """0-based image labels from the HDF5 and/or res101.mat, which must agree when both exist."""
    from_h5 = h5.field("labels")
    if from_h5 is not None:
        from_h5 = from_h5.reshape(-1).astype(np.int64)
        if len(from_h5) != h5.num_images:
            raise ValueError(f"{h5.path}: field 'labels' has {len(from_h5)} entries, expected N = {h5.num_images} (feature_map)")
    if res is not None and len(res.labels) != h5.num_images:
        raise ValueError(f"{files.res101}: field 'labels' has {len(res.labels)} entries, "
                         f"expected N = {h5.num_images} ({h5.path})")
    if from_h5 is not None and res is not None and not np.array_equal(from_h5, res.labels):
        raise ValueError(
            f"field 'labels' differs between {h5.path} (0-based) and {files.res101} (1-based, minus 1) "
            f"at {int((from_h5 != res.labels).sum())} images"
        )
    labels = from_h5 if from_h5 is not None else (res.labels if res is not None else None)
    if labels is None:
        raise ValueError(f"{files.name}: no image labels: neither {h5.path} nor a res101.mat next to {files.att_splits} "
                         "has 'labels'")
    return labels


def _check_hdf5_side_fields(h5: RegionHDF5, table: ClassTable, locs: dict[str, np.ndarray], files: StandardFiles) -> None:
    """Fields the HDF5 repeats from att_splits.mat must match it (same dataset version)."""
    mat = str(files.att_splits)
    check_agree("att", table.attributes, h5.field("att"), mat + " (transposed)", str(h5.path))
    if table.original_attributes is not None:
        check_agree("original_att", table.original_attributes, h5.field("original_att"), mat + " (transposed)", str(h5.path))
    for field in MAIN_LOC_FIELDS:
        theirs = h5.field(field)
        if theirs is not None:
            theirs = np.sort(theirs.reshape(-1).astype(np.int64))
            check_agree(field, np.sort(locs[field]), theirs, mat + " (1-based, minus 1)", str(h5.path) + " (0-based)")


def _word_vectors(files: StandardFiles, h5: RegionHDF5) -> np.ndarray | None:
    if files.word_vectors is not None:
        return load_word_vectors(files.word_vectors)
    return h5.field("w2v_att")


def convert_standard(files: StandardFiles, out_dir: str | os.PathLike) -> tuple[ClassSemantics, dict[str, np.ndarray]]:
    """Check a benchmark's files and write its splits under ``out_dir`` (finished splits are kept).

    Returns the class semantics and the positions of train_sub / val inside the train split:
    xlsa17's train_loc / val_loc also cover test_seen images, so they are intersected with
    trainval, which keeps test images out of model selection and avoids storing trainval twice.
    """
    out_dir = Path(out_dir)
    table, locs = read_att_splits(files.att_splits)
    res = read_res101(files.res101) if files.res101 is not None else None
    with RegionHDF5(files.region_hdf5) as h5:
        labels = _checked_labels(h5, res, files)
        check_locs(locs, h5.num_images, str(files.att_splits))
        _check_hdf5_side_fields(h5, table, locs, files)
        num_classes = len(table.class_names)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"{files.name}: image labels lie in [{labels.min()}, {labels.max()}] (0-based), expected [0, {num_classes}) "
                f"for the C = {num_classes} classes of {files.att_splits}"
            )
        pooled = None if res is None else res.features
        if pooled is not None and pooled.shape[1] != h5.feature_dim:
            raise ValueError(
                f"{files.res101}: field 'features' has D = {pooled.shape[1]}, "
                f"but {h5.path} 'feature_map' has D = {h5.feature_dim}"
            )
        indices = {
            "train": np.sort(locs["trainval_loc"]),
            "test_seen": np.sort(locs["test_seen_loc"]),
            "test_unseen": np.sort(locs["test_unseen_loc"]),
        }
        subsets = {}
        if "train_loc" in locs and "val_loc" in locs:
            subsets = {
                "train_sub": np.flatnonzero(np.isin(indices["train"], locs["train_loc"])),
                "val": np.flatnonzero(np.isin(indices["train"], locs["val_loc"])),
            }
        split_labels = {name: labels[idx] for name, idx in indices.items()}
        split_labels.update({name: split_labels["train"][pos] for name, pos in subsets.items()})
        semantics = build_semantics(
            attributes=table.attributes,
            original_attributes=table.original_attributes,
            class_names=table.class_names,
            split_labels=split_labels,
            word_vectors=_word_vectors(files, h5),
            attribute_names=None,
            source=f"{files.name} ({files.att_splits.parent})",
        )
        features = region_feature_features(h5.num_regions, h5.feature_dim, table.class_names, with_global=pooled is not None)
        for name, idx in indices.items():
            if not (out_dir / name).is_dir():
                write_split(
                    split_batches(h5.iter_regions(idx), idx, labels, pooled), features, out_dir / name, num_rows=len(idx),
                    desc=f"{files.name} {name}",
                )
    return semantics, subsets
