"""Hub layout: a converted dataset round-trips through Parquet + README configs in a local folder."""
from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

from modeling_scegg.data import (
    RegionFeatureReader,
    SyntheticConfig,
    generate_synthetic,
    load_zsl_dataset,
    save_zsl_dataset_to_hub_layout,
)

CONFIG = SyntheticConfig(num_classes=7, num_unseen=2, num_val=1, num_attributes=6, num_regions=4, feature_dim=8,
                         word_dim=5, train_images_per_class=5, test_seen_images_per_class=2, test_unseen_images_per_class=3)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    ds = generate_synthetic(CONFIG, root / "source")
    return ds, save_zsl_dataset_to_hub_layout(ds, root / "repo")


def test_folder_layout_and_readme(repo):
    _, folder = repo
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert "README.md" in files and "features/train-00000-of-00001.parquet" in files
    assert "classes/train-00000-of-00001.parquet" in files and "attributes/train-00000-of-00001.parquet" in files
    header = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    configs = {c["config_name"]: c for c in header["configs"]}
    assert set(configs) == {"features", "classes", "attributes"}
    assert [f["split"] for f in configs["features"]["data_files"]] == ["train", "test_seen", "test_unseen", "train_sub", "val"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_stock_datasets_reads_every_config(repo, tmp_path: Path):
    ds, folder = repo
    def load(config, split):
        return datasets.load_dataset(str(folder), config, split=split, streaming=True, cache_dir=str(tmp_path))
    features = load("features", "test_unseen")
    assert features.features["region_features"] == datasets.Array2D((4, 8), "float16")
    assert features.features["label"].names == ds.semantics.class_names
    rows = list(load("classes", "train"))
    assert [r["class_name"] for r in rows] == ds.semantics.class_names
    assert [r["class_id"] for r in rows if r["is_unseen"]] == ds.semantics.unseen_class_ids.tolist()
    attributes = list(load("attributes", "train"))
    np.testing.assert_allclose([r["word_vector"] for r in attributes], ds.semantics.word_vectors, rtol=1e-6)


def test_round_trip_through_loader(repo, tmp_path: Path):
    ds, folder = repo
    back = load_zsl_dataset(str(folder), cache_dir=tmp_path / "cache")
    assert set(back.splits) == set(ds.splits)
    for split in ds.splits:
        ours, theirs = RegionFeatureReader(ds.splits[split]), RegionFeatureReader(back.splits[split])
        np.testing.assert_array_equal(theirs.take(np.arange(len(theirs))), ours.take(np.arange(len(ours))))
        np.testing.assert_array_equal(theirs.labels, ours.labels)
    for field in ("attributes", "original_attributes", "word_vectors", "seen_class_ids", "unseen_class_ids", "val_class_ids"):
        np.testing.assert_allclose(getattr(back.semantics, field), getattr(ds.semantics, field), rtol=1e-6)
    assert back.semantics.class_names == ds.semantics.class_names
    assert back.semantics.attribute_names == ds.semantics.attribute_names
    assert "global_features" in back.splits["train"].features


def test_is_unseen_must_match_test_unseen(repo, tmp_path: Path):
    ds, _ = repo
    wrong = ds.semantics.__class__(**{**ds.semantics.__dict__, "unseen_class_ids": ds.semantics.unseen_class_ids[:1]})
    folder = save_zsl_dataset_to_hub_layout(type(ds)(ds.name, ds.splits, wrong), tmp_path / "repo")
    with pytest.raises(ValueError, match="'is_unseen' of the classes config marks classes"):
        load_zsl_dataset(str(folder), cache_dir=tmp_path / "cache")


def test_missing_split_is_reported(repo, tmp_path: Path):
    ds, _ = repo
    partial = type(ds)(ds.name, datasets.DatasetDict({k: v for k, v in ds.splits.items() if k != "test_seen"}), ds.semantics)
    folder = save_zsl_dataset_to_hub_layout(partial, tmp_path / "repo")
    with pytest.raises(ValueError, match=r"missing splits \['test_seen'\]"):
        load_zsl_dataset(str(folder), cache_dir=tmp_path / "cache")
