"""load_zsl_dataset: dispatch, conversion once then memory-mapping, options and errors."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ResNetConfig, ResNetModel

from modeling_scegg.data import RegionFeatureReader, SyntheticConfig, load_zsl_dataset
from modeling_scegg.data import loader as loader_module
from modeling_scegg.data.converted import DATASET_JSON

TINY = SyntheticConfig(num_classes=6, num_unseen=2, num_val=1, num_attributes=5, num_regions=4, feature_dim=8,
                       word_dim=7, train_images_per_class=4, test_seen_images_per_class=1, test_unseen_images_per_class=3)


def _arrow_stamps(cache: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in cache.rglob("*.arrow")}


def test_synthetic_converts_once_then_memory_maps(tmp_path: Path, monkeypatch):
    first = load_zsl_dataset("synthetic", cache_dir=tmp_path, synthetic_config=TINY)
    stamps = _arrow_stamps(tmp_path)
    assert len(stamps) == 3  # train, test_seen, test_unseen; train_sub / val are views of train

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(loader_module, "write_synthetic_splits", no_conversion)
    second = load_zsl_dataset("synthetic", cache_dir=tmp_path, synthetic_config=TINY)
    assert _arrow_stamps(tmp_path) == stamps
    assert second.splits["train"].cache_files == first.splits["train"].cache_files
    reader = RegionFeatureReader(second.splits["val"])
    assert set(reader.labels) == set(second.semantics.val_class_ids)
    np.testing.assert_array_equal(reader.take([0]), RegionFeatureReader(first.splits["val"]).take([0]))


def test_other_config_gets_its_own_cache(tmp_path: Path):
    a = load_zsl_dataset(cache_dir=tmp_path, synthetic_config=TINY)
    b = load_zsl_dataset(cache_dir=tmp_path, synthetic_config=SyntheticConfig(**{**TINY.__dict__, "seed": 1}))
    assert a.splits["train"].cache_files != b.splits["train"].cache_files


def test_interrupted_conversion_resumes_with_finished_splits(tmp_path: Path):
    load_zsl_dataset(cache_dir=tmp_path, synthetic_config=TINY)
    folder = next(p for p in tmp_path.iterdir() if p.is_dir())
    (folder / DATASET_JSON).unlink()  # as if the run died after writing the splits
    shutil.rmtree(folder / "test_unseen")
    kept = _arrow_stamps(tmp_path)
    ds = load_zsl_dataset(cache_dir=tmp_path, synthetic_config=TINY)
    after = _arrow_stamps(tmp_path)
    assert all(after[k] == v for k, v in kept.items()) and len(after) == 3
    assert len(ds.splits["test_unseen"]) == 6


def test_default_cache_is_inside_the_hugging_face_datasets_cache(tmp_path: Path, monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    ds = load_zsl_dataset(synthetic_config=TINY)
    assert ds.splits["train"].cache_files[0]["filename"].startswith(str(tmp_path / "hf-datasets" / "scegg"))


def test_default_cache_follows_hf_home(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "HF_DATASETS_CACHE"}
    env["HF_HOME"] = str(tmp_path / "home")
    code = "from modeling_scegg.data import default_cache_dir; print(default_cache_dir())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert Path(out.strip()) == tmp_path / "home" / "datasets" / "scegg"


def test_clip_negative_attributes(tmp_path: Path, monkeypatch):
    ds = load_zsl_dataset(cache_dir=tmp_path, synthetic_config=TINY)
    raw = ds.semantics.attributes.copy()
    raw[0, 0] = -0.2
    monkeypatch.setattr(loader_module, "open_converted", lambda out: type(ds)(ds.name, ds.splits, type(ds.semantics)(
        **{**ds.semantics.__dict__, "attributes": raw})))
    kept = load_zsl_dataset(cache_dir=tmp_path, synthetic_config=TINY)
    clipped = load_zsl_dataset(cache_dir=tmp_path, synthetic_config=TINY, clip_negative_attributes=True)
    assert kept.semantics.attributes[0, 0] == pytest.approx(-0.2)
    assert clipped.semantics.attributes.min() >= 0
    np.testing.assert_allclose(np.linalg.norm(clipped.semantics.attributes, axis=1), 1, atol=1e-6)


def test_properties(tmp_path: Path):
    ds = load_zsl_dataset(cache_dir=tmp_path, synthetic_config=TINY)
    sem = ds.semantics
    assert (sem.num_classes, sem.num_attributes, sem.word_dim, ds.num_regions, ds.feature_dim) == (6, 5, 7, 4, 8)
    assert sem.seen_class_ids.dtype == np.int64 and np.all(np.diff(sem.seen_class_ids) > 0)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (("nonsense name!",), {}, ValueError, "unknown dataset"),
        (("CUB",), {}, ValueError, "needs data_dir"),
        (("CUB",), {"synthetic_config": TINY}, ValueError, "synthetic_config is only used"),
        (("synthetic",), {"image_backbone": "x"}, ValueError, "need class_attributes_file"),
        (("cub",), {"data_dir": "/nonexistent"}, FileNotFoundError, "no att_splits file"),
    ],
)
def test_errors(tmp_path: Path, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        load_zsl_dataset(*args, cache_dir=tmp_path, **kwargs)


def test_image_folder_is_delegated(tmp_path: Path):
    rng = np.random.default_rng(0)
    classes = ["heron", "wren", "finch"]
    for name in classes:
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    header = "class_name,is_unseen,a0,a1,a2"
    rows = [f"{name},{int(name == 'finch')},{rng.uniform(1, 100):.2f},{rng.uniform(1, 100):.2f},{rng.uniform(1, 100):.2f}"
            for name in classes]
    (tmp_path / "classes.csv").write_text("\n".join([header, *rows]) + "\n")
    torch.manual_seed(0)
    backbone = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])).eval()
    options = {"crop_size": 64, "device": "cpu", "test_seen_fraction": 0.34}
    ds = load_zsl_dataset(str(tmp_path / "images"), cache_dir=tmp_path / "cache", class_attributes_file=tmp_path / "classes.csv",
                          image_backbone=backbone, image_options=options)
    assert ds.semantics.class_names == classes
    np.testing.assert_array_equal(ds.semantics.unseen_class_ids, [2])
    assert (ds.num_regions, ds.feature_dim, len(ds.splits["test_unseen"])) == (4, 8, 3)
    assert RegionFeatureReader(ds.splits["train"]).take([0]).shape == (1, 4, 8)
