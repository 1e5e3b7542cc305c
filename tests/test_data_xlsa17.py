"""xlsa17 + region-HDF5 source: metadata reading, conversion, cross-checks and every error path.

Fixtures write the exact community layouts (att_splits.mat / res101.mat with scipy.io.savemat,
the region HDF5 with h5py, the word-vector pickle) at tiny sizes; the real att_splits.mat files
in ../shared/data give the real class and split structure.
"""
from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from modeling_scegg.data import RegionFeatureReader, load_zsl_dataset, read_att_splits, read_res101
from modeling_scegg.data.xlsa17 import RegionHDF5, find_standard_files

REAL = {  # classes, attributes, (trainval, test_seen, test_unseen), (seen, unseen)
    "CUB": (200, 312, (7057, 1764, 2967), (150, 50)),
    "SUN": (717, 102, (10320, 2580, 1440), (645, 72)),
    "AWA2": (50, 85, (23527, 5882, 7913), (40, 10)),
}


@dataclass
class Toy:
    """What a fixture wrote, for the assertions."""

    root: Path
    feature_map: np.ndarray  # (N, D, H, W)
    labels: np.ndarray  # 0-based
    locs: dict[str, np.ndarray]  # 0-based
    att: np.ndarray  # (A, C) as in the mat
    word_vectors: np.ndarray
    pooled: np.ndarray  # (N, D)


def _spread(indices: np.ndarray, class_ids: np.ndarray) -> dict[int, int]:
    """Contiguous blocks of the sorted indices, one block per class (images are stored class by class)."""
    blocks = np.array_split(np.sort(indices), len(class_ids))
    return {int(i): int(c) for block, c in zip(blocks, class_ids) for i in block}


def make_labels(locs: dict[str, np.ndarray], num_classes: int, num_unseen: int, num_val: int, seed: int = 0) -> np.ndarray:
    """Labels consistent with the split structure: unseen classes own test_unseen, seen classes
    own trainval + test_seen, and (when given) val classes own val_loc, train classes train_loc."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_classes)
    unseen, seen = np.sort(order[:num_unseen]), np.sort(order[num_unseen:])
    size = 1 + max(int(v.max()) for v in locs.values())
    labels = np.full(size, -1, dtype=np.int64)
    assignment = _spread(locs["test_unseen_loc"], unseen)
    if "val_loc" in locs:
        assignment.update(_spread(locs["val_loc"], seen[:num_val]))
        assignment.update(_spread(locs["train_loc"], seen[num_val:]))
    else:
        assignment.update(_spread(np.concatenate([locs["trainval_loc"], locs["test_seen_loc"]]), seen))
    labels[list(assignment)] = list(assignment.values())
    assert (labels >= 0).all()
    return labels


def _cell(strings: list[str]) -> np.ndarray:
    cell = np.empty((len(strings), 1), dtype=object)
    cell[:, 0] = strings
    return cell


def write_standard_layout(
    root: Path,
    name: str = "CUB",
    *,
    num_classes: int = 6,
    num_unseen: int = 2,
    num_attributes: int = 5,
    feature_dim: int = 4,
    grid: tuple[int, int] = (2, 2),
    per_class: int = 6,
    with_val: bool = True,
    with_res101: bool = True,
    word_dim: int = 7,
    locs: dict[str, np.ndarray] | None = None,
    att: np.ndarray | None = None,
    original: np.ndarray | None = None,
    names: list[str] | None = None,
    word_vectors: np.ndarray | None = None,
    num_val: int = 1,
    seed: int = 0,
) -> Toy:
    """Write att_splits.mat, res101.mat, the region HDF5 and the w2v pickle in the standard layout."""
    rng = np.random.default_rng(seed)
    if locs is None:
        labels_per_image = np.repeat(np.arange(num_classes), per_class)
        unseen = np.arange(num_classes - num_unseen, num_classes)
        is_unseen = np.isin(labels_per_image, unseen)
        seen_idx = np.flatnonzero(~is_unseen)
        test_seen = seen_idx[np.arange(len(seen_idx)) % per_class == 0]
        trainval = np.setdiff1d(seen_idx, test_seen)
        locs = {"trainval_loc": trainval, "test_seen_loc": test_seen, "test_unseen_loc": np.flatnonzero(is_unseen)}
        if with_val:
            val_images = np.isin(labels_per_image, np.arange(num_val))
            locs["val_loc"] = np.flatnonzero(val_images & ~is_unseen)
            locs["train_loc"] = np.flatnonzero(~val_images & ~is_unseen)
        labels = labels_per_image
    else:
        labels = make_labels(locs, num_classes, num_unseen, num_val, seed)
    num_images = len(labels)
    if att is None:
        att = rng.random((num_attributes, num_classes)) + 0.05
        att /= np.linalg.norm(att, axis=0, keepdims=True)
    num_attributes = att.shape[0]
    original = att * 100 if original is None else original
    names = names or [f"{i + 1:03d}.class_{i}" for i in range(num_classes)]
    height, width = grid
    feature_map = rng.random((num_images, feature_dim, height, width)).astype(np.float16).astype(np.float32)
    pooled = feature_map.reshape(num_images, feature_dim, -1).mean(axis=2)
    xlsa = root / "xlsa17" / "data" / name
    xlsa.mkdir(parents=True, exist_ok=True)
    mat = {"att": att, "original_att": original, "allclasses_names": _cell(names)}
    mat.update({k: (v + 1).reshape(-1, 1).astype(np.float64) for k, v in locs.items()})
    scipy.io.savemat(xlsa / "att_splits.mat", mat)
    if with_res101:
        scipy.io.savemat(
            xlsa / "res101.mat",
            {"features": pooled.T, "labels": (labels + 1).reshape(-1, 1).astype(np.float64),
             "image_files": _cell([f"img_{i}.jpg" for i in range(num_images)])},
        )
    (root / name).mkdir(exist_ok=True)
    with h5py.File(root / name / f"feature_map_ResNet_101_{name}.hdf5", "w") as f:
        f.create_dataset("feature_map", data=feature_map, chunks=(1, feature_dim, height, width))
        f.create_dataset("labels", data=labels)
        for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc"):
            f.create_dataset(key, data=locs[key])
        f.create_dataset("att", data=att.T)
        f.create_dataset("original_att", data=original.T)
    if word_vectors is None:
        word_vectors = rng.standard_normal((num_attributes, word_dim))
    (root / "w2v").mkdir(exist_ok=True)
    with open(root / "w2v" / f"{name}_attribute.pkl", "wb") as handle:
        pickle.dump(word_vectors, handle)
    return Toy(root, feature_map, labels, locs, att, word_vectors, pooled)


@pytest.fixture
def toy(tmp_path: Path) -> Toy:
    return write_standard_layout(tmp_path / "data")


def _hdf5(toy: Toy) -> Path:
    return toy.root / "CUB" / "feature_map_ResNet_101_CUB.hdf5"


def _mat(toy: Toy, which: str = "att_splits") -> Path:
    return toy.root / "xlsa17" / "data" / "CUB" / f"{which}.mat"


def _rewrite_hdf5(toy: Toy, **fields) -> None:
    with h5py.File(_hdf5(toy), "a") as f:
        for key, value in fields.items():
            if key in f:
                del f[key]
            if value is not None:
                f.create_dataset(key, data=value)


def _rewrite_mat(path: Path, **fields) -> None:
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    for key, value in fields.items():
        mat.pop(key, None)
        if value is not None:
            mat[key] = value
    scipy.io.savemat(path, mat)


# --- the real metadata ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL))
def test_read_att_splits_real_metadata(shared_data: Path, name: str):
    classes, attributes, sizes, _ = REAL[name]
    table, locs = read_att_splits(shared_data / "xlsa17" / name / "att_splits.mat")
    assert table.attributes.shape == (classes, attributes)
    assert table.original_attributes.shape == (classes, attributes)
    assert len(table.class_names) == classes and all(table.class_names)
    np.testing.assert_allclose(np.linalg.norm(table.attributes, axis=1), 1.0, atol=1e-4)
    assert tuple(len(locs[k]) for k in ("trainval_loc", "test_seen_loc", "test_unseen_loc")) == sizes
    assert min(v.min() for v in locs.values()) == 0  # 1-based in the file, 0-based here
    assert max(v.max() for v in locs.values()) == sum(sizes) - 1
    assert ("val_loc" in locs) == (name != "CUB")  # the CUB copy lacks train_loc / val_loc


@pytest.mark.parametrize("name", sorted(REAL))
def test_full_dataset_from_real_metadata(shared_data: Path, tmp_path: Path, name: str):
    """Real att_splits.mat + real w2v pickle + a generated 2x2-region HDF5 of the real N."""
    classes, attributes, sizes, (num_seen, num_unseen) = REAL[name]
    table, locs = read_att_splits(shared_data / "xlsa17" / name / "att_splits.mat")
    num_val = 0
    if "val_loc" in locs:
        num_val = round(num_seen * len(locs["val_loc"]) / (len(locs["val_loc"]) + len(locs["train_loc"])))
    root = tmp_path / "data"
    toy = write_standard_layout(
        root, name, locs=locs, att=table.attributes.T, original=table.original_attributes.T, names=table.class_names,
        num_unseen=num_unseen,
        num_classes=classes, feature_dim=2, grid=(2, 2), num_val=num_val, with_res101=False,
        word_vectors=np.zeros((1, 1)),
    )
    os.remove(root / "w2v" / f"{name}_attribute.pkl")
    shutil.copy(shared_data / "w2v" / f"{name}_attribute.pkl", root / "w2v")
    shutil.copy(shared_data / "xlsa17" / name / "att_splits.mat", root / "xlsa17" / "data" / name / "att_splits.mat")

    ds = load_zsl_dataset(name, data_dir=root, cache_dir=tmp_path / "cache")
    sem = ds.semantics
    assert (len(sem.seen_class_ids), len(sem.unseen_class_ids)) == (num_seen, num_unseen)
    assert sem.attributes.shape == (classes, attributes) and sem.word_vectors.shape == (attributes, 300)
    assert tuple(len(ds.splits[s]) for s in ("train", "test_seen", "test_unseen")) == sizes
    assert (ds.num_regions, ds.feature_dim) == (4, 2)
    train = RegionFeatureReader(ds.splits["train"])
    np.testing.assert_array_equal(train.labels, toy.labels[np.sort(locs["trainval_loc"])])
    if num_val:
        trainval = set(locs["trainval_loc"].tolist())
        assert len(ds.splits["val"]) == len(trainval & set(locs["val_loc"].tolist()))
        assert len(ds.splits["train_sub"]) + len(ds.splits["val"]) == sizes[0]
        assert len(sem.val_class_ids) == num_val
        assert not set(RegionFeatureReader(ds.splits["val"]).labels) & set(RegionFeatureReader(ds.splits["train_sub"]).labels)


# --- conversion of a tiny fixture -------------------------------------------------------------


def test_standard_layout_round_trip(toy: Toy, tmp_path: Path):
    ds = load_zsl_dataset("CUB", data_dir=toy.root, cache_dir=tmp_path / "cache")
    sem = ds.semantics
    np.testing.assert_array_equal(sem.seen_class_ids, [0, 1, 2, 3])
    np.testing.assert_array_equal(sem.unseen_class_ids, [4, 5])
    np.testing.assert_array_equal(sem.val_class_ids, [0])
    np.testing.assert_allclose(sem.attributes, toy.att.T, rtol=1e-6)
    np.testing.assert_allclose(sem.original_attributes, toy.att.T * 100, rtol=1e-5)
    np.testing.assert_allclose(sem.word_vectors, toy.word_vectors, rtol=1e-6)
    for split, loc in (("train", "trainval_loc"), ("test_seen", "test_seen_loc"), ("test_unseen", "test_unseen_loc")):
        images = np.sort(toy.locs[loc])
        reader = RegionFeatureReader(ds.splits[split])
        expected = toy.feature_map[images].reshape(len(images), 4, -1).transpose(0, 2, 1)  # (n, H*W, D)
        np.testing.assert_array_equal(reader.take(np.arange(len(reader))), expected.astype(np.float16))
        np.testing.assert_array_equal(reader.labels, toy.labels[images])
        pooled = np.asarray(ds.splits[split].with_format("numpy")["global_features"])
        np.testing.assert_allclose(pooled, toy.pooled[images], rtol=1e-6)
    val_labels = RegionFeatureReader(ds.splits["val"]).labels
    assert set(val_labels) == {0} and len(val_labels) == 5  # trainval images of class 0 only


def test_region_hdf5_reads_blocks_in_order(toy: Toy, monkeypatch):
    monkeypatch.setattr("modeling_scegg.data.xlsa17._MAX_BLOCK_IMAGES", 3)
    indices = np.array([0, 1, 2, 7, 20, 21, 35])
    with RegionHDF5(_hdf5(toy)) as h5:
        assert (h5.num_images, h5.feature_dim, h5.num_regions) == (36, 4, 4)
        got = np.concatenate(list(h5.iter_regions(indices)))
    np.testing.assert_array_equal(got, toy.feature_map[indices].reshape(7, 4, 4).transpose(0, 2, 1))


def test_read_res101_is_zero_based(toy: Toy):
    res = read_res101(_mat(toy, "res101"))
    np.testing.assert_array_equal(res.labels, toy.labels)
    np.testing.assert_allclose(res.features, toy.pooled, rtol=1e-6)
    assert res.image_files[:2] == ["img_0.jpg", "img_1.jpg"]


def test_res101_is_optional(toy: Toy, tmp_path: Path):
    os.remove(_mat(toy, "res101"))
    ds = load_zsl_dataset("CUB", data_dir=toy.root, cache_dir=tmp_path / "cache")
    assert "global_features" not in ds.splits["train"].features


def test_find_standard_files_accepts_layout_without_data_level(toy: Toy):
    shutil.move(toy.root / "xlsa17" / "data" / "CUB", toy.root / "xlsa17" / "CUB")
    files = find_standard_files("CUB", toy.root)
    assert files.att_splits == toy.root / "xlsa17" / "CUB" / "att_splits.mat"


def test_second_load_does_not_convert_again(toy: Toy, tmp_path: Path, monkeypatch):
    load_zsl_dataset("CUB", data_dir=toy.root, cache_dir=tmp_path / "cache")
    arrow = sorted((tmp_path / "cache").rglob("*.arrow"))
    stamps = [p.stat().st_mtime_ns for p in arrow]

    def no_conversion(*args, **kwargs):
        raise AssertionError("the second load converted again")

    monkeypatch.setattr("modeling_scegg.data.loader.convert_standard", no_conversion)
    ds = load_zsl_dataset("CUB", data_dir=toy.root, cache_dir=tmp_path / "cache")
    assert [p.stat().st_mtime_ns for p in arrow] == stamps and len(ds.splits["train"]) == 20
    assert ds.splits["train"].cache_files[0]["filename"] in {str(p) for p in arrow}


def test_changed_source_file_is_converted_again(toy: Toy, tmp_path: Path):
    load_zsl_dataset("CUB", data_dir=toy.root, cache_dir=tmp_path / "cache")
    _rewrite_hdf5(toy, feature_map=toy.feature_map * 0.5)
    ds = load_zsl_dataset("CUB", data_dir=toy.root, cache_dir=tmp_path / "cache")
    reader = RegionFeatureReader(ds.splits["test_unseen"])
    first = np.sort(toy.locs["test_unseen_loc"])[0]
    np.testing.assert_allclose(reader.take([0])[0], (toy.feature_map[first] * 0.5).reshape(4, -1).T, rtol=1e-3)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2


def test_word_vectors_fall_back_to_hdf5(toy: Toy, tmp_path: Path):
    os.remove(toy.root / "w2v" / "CUB_attribute.pkl")
    vectors = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    _rewrite_hdf5(toy, w2v_att=vectors)
    ds = load_zsl_dataset("CUB", data_dir=toy.root, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.semantics.word_vectors, vectors)


# --- errors -----------------------------------------------------------------------------------


def _load(toy: Toy, tmp_path: Path):
    return load_zsl_dataset("CUB", data_dir=toy.root, cache_dir=tmp_path / "cache")


def test_missing_att_splits(toy: Toy, tmp_path: Path):
    os.remove(_mat(toy))
    with pytest.raises(FileNotFoundError, match="att_splits.*looked for"):
        _load(toy, tmp_path)


def test_missing_hdf5(toy: Toy, tmp_path: Path):
    os.remove(_hdf5(toy))
    with pytest.raises(FileNotFoundError, match="region_hdf5"):
        _load(toy, tmp_path)


def test_corrupt_mat(toy: Toy, tmp_path: Path):
    _mat(toy).write_bytes(b"MATLAB 5.0 MAT-file garbage" + bytes(50))
    with pytest.raises(ValueError, match="att_splits.mat: not a readable MATLAB"):
        _load(toy, tmp_path)


def test_corrupt_hdf5(toy: Toy, tmp_path: Path):
    _hdf5(toy).write_bytes(b"\x89HDF\r\n" + bytes(100))
    with pytest.raises(ValueError, match="feature_map_ResNet_101_CUB.hdf5: not a readable HDF5"):
        _load(toy, tmp_path)


def test_corrupt_pickle(toy: Toy, tmp_path: Path):
    path = toy.root / "w2v" / "CUB_attribute.pkl"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="CUB_attribute.pkl: not a readable word-vector pickle"):
        _load(toy, tmp_path)


@pytest.mark.parametrize("field", ["att", "allclasses_names", "test_unseen_loc"])
def test_missing_mat_field(toy: Toy, tmp_path: Path, field: str):
    _rewrite_mat(_mat(toy), **{field: None})
    with pytest.raises(ValueError, match=f"att_splits.mat: missing field '{field}'"):
        _load(toy, tmp_path)


def test_missing_feature_map(toy: Toy, tmp_path: Path):
    _rewrite_hdf5(toy, feature_map=None)
    with pytest.raises(ValueError, match=r"missing field .feature_map. \(found: \[.att., .labels.,"):
        _load(toy, tmp_path)


def test_no_labels_anywhere(toy: Toy, tmp_path: Path):
    _rewrite_hdf5(toy, labels=None)
    os.remove(_mat(toy, "res101"))
    with pytest.raises(ValueError, match="no image labels"):
        _load(toy, tmp_path)


def test_word_vectors_of_wrong_attribute_count(toy: Toy, tmp_path: Path):
    with open(toy.root / "w2v" / "CUB_attribute.pkl", "wb") as handle:
        pickle.dump(np.ones((4, 7)), handle)
    with pytest.raises(ValueError, match=r"word vectors have 4 rows \(shape \(4, 7\)\).*A = 5"):
        _load(toy, tmp_path)


def test_att_shape_disagrees_with_class_names(toy: Toy, tmp_path: Path):
    _rewrite_mat(_mat(toy), allclasses_names=_cell(["a", "b"]))
    with pytest.raises(ValueError, match="'allclasses_names' has 2 names, expected C = 6"):
        _load(toy, tmp_path)


def test_labels_out_of_range(toy: Toy, tmp_path: Path):
    labels = toy.labels.copy()
    labels[3] = 6
    _rewrite_hdf5(toy, labels=labels)
    os.remove(_mat(toy, "res101"))
    with pytest.raises(ValueError, match=r"image labels lie in \[0, 6\].*expected \[0, 6\)"):
        _load(toy, tmp_path)


def test_locs_out_of_range(toy: Toy, tmp_path: Path):
    _rewrite_mat(_mat(toy), test_unseen_loc=np.array([[36.0], [37.0]]))
    _rewrite_hdf5(toy, test_unseen_loc=None)
    with pytest.raises(ValueError, match=r"'test_unseen_loc' has image indices in \[35, 36\].*expected \[0, 36\)"):
        _load(toy, tmp_path)


def test_zero_in_one_based_locs(toy: Toy, tmp_path: Path):
    _rewrite_mat(_mat(toy), test_seen_loc=np.array([[0.0], [1.0]]))
    with pytest.raises(ValueError, match="'test_seen_loc' holds 1-based indices"):
        _load(toy, tmp_path)


def test_overlapping_splits(toy: Toy, tmp_path: Path):
    trainval = np.concatenate([toy.locs["trainval_loc"], toy.locs["test_seen_loc"][:2]])
    _rewrite_mat(_mat(toy), trainval_loc=(trainval + 1).reshape(-1, 1).astype(float))
    _rewrite_hdf5(toy, trainval_loc=None)
    with pytest.raises(ValueError, match="'trainval_loc' and 'test_seen_loc' overlap in 2 images"):
        _load(toy, tmp_path)


def test_class_without_images(tmp_path: Path):
    toy = write_standard_layout(tmp_path / "data")
    labels = toy.labels.copy()
    labels[labels == 3] = 2  # class 3 disappears, its images become class 2
    _rewrite_hdf5(toy, labels=labels)
    os.remove(_mat(toy, "res101"))
    with pytest.raises(ValueError, match=r"classes 3 \(004.class_3\) have no images"):
        _load(toy, tmp_path)


def test_class_both_seen_and_unseen(toy: Toy, tmp_path: Path):
    labels = toy.labels.copy()
    labels[toy.locs["test_unseen_loc"][0]] = 1
    _rewrite_hdf5(toy, labels=labels)
    os.remove(_mat(toy, "res101"))
    with pytest.raises(ValueError, match=r"classes 1 \(002.class_1\) occur in both trainval \(seen\) and test_unseen"):
        _load(toy, tmp_path)


def test_nan_features(toy: Toy, tmp_path: Path):
    maps = toy.feature_map.copy()
    maps[toy.locs["trainval_loc"][3], 1, 0, 1] = np.nan
    _rewrite_hdf5(toy, feature_map=maps)
    with pytest.raises(ValueError, match=r"'feature_map' has NaN or Inf values for images \[4\]"):
        _load(toy, tmp_path)
    assert not any((tmp_path / "cache").rglob("*.arrow")), "a failed conversion left a split behind"


def test_hdf5_and_res101_labels_must_agree(toy: Toy, tmp_path: Path):
    labels = toy.labels.copy()
    labels[[0, 1]] = labels[[1, 0]] + 1
    _rewrite_hdf5(toy, labels=labels)
    with pytest.raises(ValueError, match="field 'labels' differs between .*hdf5.*res101.mat"):
        _load(toy, tmp_path)


def test_hdf5_and_mat_att_must_agree(toy: Toy, tmp_path: Path):
    _rewrite_hdf5(toy, att=toy.att.T * 2)
    with pytest.raises(ValueError, match="field 'att' differs between"):
        _load(toy, tmp_path)


def test_hdf5_and_mat_locs_must_agree(toy: Toy, tmp_path: Path):
    _rewrite_hdf5(toy, test_seen_loc=toy.locs["test_seen_loc"] + 1)
    with pytest.raises(ValueError, match="field 'test_seen_loc' differs between"):
        _load(toy, tmp_path)


def test_feature_map_must_be_four_dimensional(toy: Toy, tmp_path: Path):
    _rewrite_hdf5(toy, feature_map=toy.feature_map.reshape(36, 4, 4))
    with pytest.raises(ValueError, match=r"'feature_map' must be \(N, D, H, W\), got shape \(36, 4, 4\)"):
        _load(toy, tmp_path)


def test_any_dataset_name_in_the_standard_layout(tmp_path: Path):
    """APY, FLO or a user's own set in the xlsa17 layout load by name, sizes read from the files;
    a name whose files are absent is a clear error listing where it looked."""
    write_standard_layout(tmp_path / "data", "MyBirds", num_classes=7, num_unseen=2, num_attributes=4, feature_dim=3,
                          grid=(1, 2), per_class=5)
    ds = load_zsl_dataset("MyBirds", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert (ds.name, ds.num_regions, ds.feature_dim, ds.semantics.num_classes) == ("MyBirds", 2, 3, 7)
    with pytest.raises(FileNotFoundError, match=r"APY: no att_splits file .*xlsa17/data/APY/att_splits.mat"):
        load_zsl_dataset("APY", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
