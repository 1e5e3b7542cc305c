"""Arrow feature store: write_split validation/atomicity and the RegionFeatureReader fast path."""
from __future__ import annotations

import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest

from modeling_scegg.data import store
from modeling_scegg.data.store import RegionFeatureReader, load_split, region_feature_features, write_split

R, D, CLASSES = 3, 5, ["a", "b", "c"]


def _data(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    regions = rng.random((n, R, D)).astype(np.float32)
    return regions, rng.integers(0, len(CLASSES), n)


def _batches(regions, labels, size=7, pooled=None):
    for i in range(0, len(labels), size):
        batch = {"region_features": regions[i : i + size], "label": labels[i : i + size]}
        if pooled is not None:
            batch["global_features"] = pooled[i : i + size]
        yield batch


@pytest.fixture
def split(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(store, "_RECORD_BATCH_BYTES", R * D * 2 * 11)  # 11 rows per record batch
    regions, labels = _data()
    ds = write_split(_batches(regions, labels), region_feature_features(R, D, CLASSES), tmp_path / "train", num_rows=60)
    return ds, regions.astype(np.float16), labels


def test_schema():
    features = region_feature_features(R, D, CLASSES, with_global=True)
    assert features["region_features"] == datasets.Array2D((R, D), "float16")
    assert features["label"].names == CLASSES
    assert features["global_features"] == datasets.List(datasets.Value("float32"), length=D)


def test_write_split_round_trip(tmp_path: Path):
    regions, labels = _data()
    pooled = regions.mean(axis=1)
    features = region_feature_features(R, D, CLASSES, with_global=True)
    ds = write_split(_batches(regions, labels, pooled=pooled), features, tmp_path / "s", num_rows=60)
    assert ds.features == features and len(ds) == 60
    assert ds.cache_files == [{"filename": str(tmp_path / "s" / "data.arrow")}]
    table = ds.with_format("numpy")[:]
    np.testing.assert_array_equal(table["region_features"], regions.astype(np.float16))  # float32 in, float16 stored
    np.testing.assert_array_equal(table["label"], labels)
    np.testing.assert_allclose(table["global_features"], pooled)
    assert list(tmp_path.iterdir()) == [tmp_path / "s"]  # no temporary folder left
    assert len(load_split(tmp_path / "s")) == 60


def test_write_split_replaces_existing_split(tmp_path: Path):
    regions, labels = _data()
    features = region_feature_features(R, D, CLASSES)
    write_split(_batches(regions, labels), features, tmp_path / "s")
    ds = write_split(_batches(regions[:10], labels[:10]), features, tmp_path / "s")
    assert len(ds) == 10 and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: {**b, "region_features": b["region_features"][:, :2]}, r"must have shape \(n, 3, 5\), got \(7, 2, 5\)"),
        (lambda b: {**b, "label": b["label"][:3]}, r"'label' must be \(7,\) integers, got \(3,\)"),
        (lambda b: {**b, "label": b["label"] + 3}, r"must lie in \[0, 3\)"),
        (lambda b: {**b, "label": b["label"].astype(float)}, "integers"),
        (lambda b: {"region_features": b["region_features"]}, "has fields"),
        (lambda b: {**b, "region_features": np.full_like(b["region_features"], np.nan)}, "NaN or Inf"),
        (lambda b: {**b, "region_features": b["region_features"] * 1e6}, "beyond the float16 range"),
        (lambda b: {**b, "region_features": b["region_features"].astype(int)}, "floating point"),
    ],
)
def test_write_split_rejects_bad_batches_and_leaves_nothing(tmp_path: Path, change, message):
    regions, labels = _data()
    batches = list(_batches(regions, labels))
    batches[2] = change(batches[2])
    with pytest.raises(ValueError, match=message) as error:
        write_split(iter(batches), region_feature_features(R, D, CLASSES), tmp_path / "s")
    assert "batch 2" in str(error.value) and str(tmp_path / "s") in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_write_split_checks_row_count(tmp_path: Path):
    regions, labels = _data()
    with pytest.raises(ValueError, match="expected 61 rows, the batches held 60"):
        write_split(_batches(regions, labels), region_feature_features(R, D, CLASSES), tmp_path / "s", num_rows=61)
    assert list(tmp_path.iterdir()) == []


def test_write_split_interrupted_keeps_old_split(tmp_path: Path):
    regions, labels = _data()
    features = region_feature_features(R, D, CLASSES)
    write_split(_batches(regions, labels), features, tmp_path / "s")

    def broken():
        yield from _batches(regions[:14], labels[:14])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_split(broken(), features, tmp_path / "s")
    assert len(load_split(tmp_path / "s")) == 60 and [p.name for p in tmp_path.iterdir()] == ["s"]


def test_reader_reads_file_directly(split):
    ds, regions, labels = split
    reader = RegionFeatureReader(ds)
    assert reader.file_backed
    assert (reader.num_regions, reader.feature_dim, len(reader)) == (R, D, 60)
    order = np.random.default_rng(1).permutation(60)[:25]
    got = reader.take(order)
    assert got.dtype == np.float16 and got.shape == (25, R, D)
    np.testing.assert_array_equal(got, regions[order])
    np.testing.assert_array_equal(reader.labels, labels)
    assert reader.labels.dtype == np.int64


def test_reader_rejects_bad_indices(split):
    reader = RegionFeatureReader(split[0])
    with pytest.raises(IndexError, match=r"\[0, 60\)"):
        reader.take([60])
    with pytest.raises(IndexError):
        reader.take([-1])


def test_iter_batches_covers_everything_once(split):
    ds, regions, labels = split
    reader = RegionFeatureReader(ds)
    seen = []
    for features, batch_labels in reader.iter_batches(16, shuffle=True, seed=3):
        assert features.dtype == np.float16 and len(features) == len(batch_labels) <= 16
        rows = [int(np.flatnonzero((regions == f).all(axis=(1, 2)))[0]) for f in features]
        np.testing.assert_array_equal(labels[rows], batch_labels)
        seen += rows
    assert sorted(seen) == list(range(60)) and seen != list(range(60))
    first = [b[1] for b in reader.iter_batches(16, shuffle=True, seed=3)]
    again = [b[1] for b in reader.iter_batches(16, shuffle=True, seed=3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    subset = np.array([5, 1, 40])
    (features, batch_labels), = list(reader.iter_batches(8, indices=subset))
    np.testing.assert_array_equal(features, regions[subset])


@pytest.mark.parametrize(
    "derive, rows",
    [
        (lambda ds: ds.select([5, 3, 59, 0]), [5, 3, 59, 0]),
        (lambda ds: ds.select(range(13, 50)), list(range(13, 50))),
        (lambda ds: ds.select(range(13, 50)).select(range(4, 20)), list(range(17, 33))),
        (lambda ds: ds.train_test_split(test_size=0.25, shuffle=False)["test"], list(range(45, 60))),
        (lambda ds: datasets.concatenate_datasets([ds.select(range(50, 60)), ds.select(range(0, 12))]),
         list(range(50, 60)) + list(range(12))),
        (lambda ds: ds.remove_columns([]), list(range(60))),
        (lambda ds: ds.shuffle(seed=0).select(range(7)), "by content"),
        (lambda ds: ds.filter(lambda label: label == 1, input_columns="label"), "by content"),
        (lambda ds: ds.select([4, 9], keep_in_memory=True), [4, 9]),
    ],
)
def test_reader_follows_dataset_views(split, derive, rows):
    """Every view datasets can make of a stored split is read from the file, row for row."""
    ds, regions, labels = split
    view = derive(ds)
    if rows == "by content":  # the rows datasets' own (slow) formatter returns
        stored = view.with_format("numpy")["region_features"]
        rows = [int(np.flatnonzero((regions == r).all(axis=(1, 2)))[0]) for r in stored]
    reader = RegionFeatureReader(view)
    assert reader.file_backed
    np.testing.assert_array_equal(reader.take(np.arange(len(rows))), regions[rows])
    np.testing.assert_array_equal(reader.labels, labels[rows])


def test_reader_reads_what_a_map_wrote(split, tmp_path):
    """A transform writes a new file; the reader follows the dataset there, not to the original."""
    ds = split[0]
    doubled = ds.map(lambda batch: {"region_features": np.asarray(batch["region_features"]) * 2}, batched=True,
                     cache_file_name=str(tmp_path / "doubled.arrow"), features=ds.features)
    reader = RegionFeatureReader(doubled)
    assert reader.file_backed and str(tmp_path / "doubled.arrow") in reader._sources
    np.testing.assert_array_equal(reader.take([3, 1]), split[1][[3, 1]] * 2)


def test_reader_on_in_memory_dataset():
    regions, labels = _data()
    ds = datasets.Dataset.from_dict(
        {"region_features": regions.astype(np.float16), "label": labels}, features=region_feature_features(R, D, CLASSES)
    )
    reader = RegionFeatureReader(ds)
    assert not reader.file_backed
    np.testing.assert_array_equal(reader.take([7, 2]), regions[[7, 2]].astype(np.float16))


def test_reader_pickles_for_dataloader_workers(split):
    ds, regions, _ = split
    reader = RegionFeatureReader(ds)
    reader.take([0])
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.take([9, 8]), regions[[9, 8]])


def test_reader_matches_torch_format(split):
    """The fast path returns what the (slower, upcasting) torch formatter returns."""
    ds = split[0]
    torch_rows = ds.with_format("torch")[[4, 17]]["region_features"]
    assert str(torch_rows.dtype) == "torch.float32"
    np.testing.assert_array_equal(RegionFeatureReader(ds).take([4, 17]).astype(np.float32), torch_rows.numpy())


def test_reader_refuses_other_schemas():
    ds = datasets.Dataset.from_dict({"x": [1, 2], "label": [0, 1]})
    with pytest.raises(ValueError, match="'region_features' column of type Array2D"):
        RegionFeatureReader(ds)
