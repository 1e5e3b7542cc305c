"""Synthetic region features for the real class metadata, written in the standard layout and read
back through the same loader as real data."""
import numpy as np
import pytest

from modeling_scegg.data import RegionFeatureReader, load_word_vectors, load_zsl_dataset, read_att_splits
from modeling_scegg.data.synthetic_layout import assign_labels, subsample_locs, write_synthetic_benchmark

# classes, attributes, (trainval, test_seen, test_unseen), (seen, unseen, val)
REAL = {"CUB": (200, 312, (7057, 1764, 2967), (150, 50, 50)),
        "SUN": (717, 102, (10320, 2580, 1440), (645, 72, 65)),
        "AWA2": (50, 85, (23527, 5882, 7913), (40, 10, 13))}


@pytest.mark.parametrize("name", sorted(REAL))
def test_benchmark_keeps_the_real_classes_and_splits(shared_data, tmp_path, name):
    classes, attributes, sizes, (num_seen, num_unseen, num_val) = REAL[name]
    root = write_synthetic_benchmark(name, shared_data, tmp_path / "data", grid=(2, 3), feature_dim=6)
    data = load_zsl_dataset(name, data_dir=root, cache_dir=tmp_path / "cache")
    table, _ = read_att_splits(shared_data / "xlsa17" / name / "att_splits.mat")
    sem = data.semantics
    assert sem.class_names == table.class_names
    np.testing.assert_allclose(sem.attributes, table.attributes, atol=1e-5)
    np.testing.assert_array_equal(sem.word_vectors, load_word_vectors(shared_data / "w2v" / f"{name}_attribute.pkl"))
    assert tuple(len(data.splits[s]) for s in ("train", "test_seen", "test_unseen")) == sizes
    assert (len(sem.seen_class_ids), len(sem.unseen_class_ids), len(sem.val_class_ids)) == (num_seen, num_unseen, num_val)
    assert (data.num_regions, data.feature_dim) == (6, 6)
    train_sub, val = (set(RegionFeatureReader(data.splits[s]).labels.tolist()) for s in ("train_sub", "val"))
    assert not train_sub & val and val == set(sem.val_class_ids.tolist())


def test_images_follow_their_class_attributes(shared_data, tmp_path):
    """An attribute a class has strongly appears in its images far more often than one it lacks:
    region energy along the attribute's prototype separates the two."""
    root = write_synthetic_benchmark("AWA2", shared_data, tmp_path / "data", grid=(2, 2), feature_dim=64, seed=1)
    data = load_zsl_dataset("AWA2", data_dir=root, cache_dir=tmp_path / "cache")
    reader = RegionFeatureReader(data.splits["train"])
    pooled = reader.take(np.arange(len(reader))).astype(np.float32).mean(axis=1)
    means = np.stack([pooled[reader.labels == c].mean(axis=0) for c in data.semantics.seen_class_ids])
    att = data.semantics.original_attributes[data.semantics.seen_class_ids]
    # classes that are alike in attributes are alike in their mean image
    image_sim, att_sim = np.corrcoef(means), np.corrcoef(att)
    upper = np.triu_indices(len(means), 1)
    assert np.corrcoef(image_sim[upper], att_sim[upper])[0, 1] > 0.5


def test_labels_respect_the_split_structure():
    rng = np.random.default_rng(0)
    locs = {"trainval_loc": np.arange(0, 40), "test_seen_loc": np.arange(40, 50), "test_unseen_loc": np.arange(50, 62)}
    locs, labels, unseen, val = assign_labels(locs, num_classes=9, num_unseen=3, rng=rng)
    assert set(labels[locs["test_unseen_loc"]]) == set(unseen.tolist())
    seen_images = np.concatenate([locs["trainval_loc"], locs["test_seen_loc"]])
    assert not set(labels[seen_images]) & set(unseen.tolist())
    assert set(labels[locs["val_loc"]]) == set(val.tolist()) and len(val) == 2
    assert sorted(np.concatenate([locs["val_loc"], locs["train_loc"]]).tolist()) == sorted(seen_images.tolist())


def test_unknown_benchmark_needs_its_unseen_count(shared_data, tmp_path):
    with pytest.raises(ValueError, match="num_unseen"):
        write_synthetic_benchmark("APY2", shared_data, tmp_path)
    with pytest.raises(FileNotFoundError, match="att_splits.mat"):
        write_synthetic_benchmark("APY2", tmp_path, tmp_path / "out", num_unseen=3)


def test_a_fraction_of_the_images_keeps_the_split_structure():
    locs = {"trainval_loc": np.arange(0, 400), "test_seen_loc": np.arange(400, 500), "test_unseen_loc": np.arange(500, 620),
            "train_loc": np.arange(0, 300), "val_loc": np.arange(300, 400)}
    kept = subsample_locs(locs, 0.25, np.random.default_rng(0))
    assert sorted(np.concatenate([kept[k] for k in ("trainval_loc", "test_seen_loc", "test_unseen_loc")])) == list(range(155))
    for name, loc in locs.items():
        assert len(kept[name]) == pytest.approx(0.25 * len(loc), rel=0.35), name
    assert sorted(np.concatenate([kept["train_loc"], kept["val_loc"]]).tolist()) == kept["trainval_loc"].tolist()
    with pytest.raises(ValueError, match="fraction"):
        subsample_locs(locs, 0.0, np.random.default_rng(0))
