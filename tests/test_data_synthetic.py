"""Synthetic benchmark: deterministic, structured like xlsa17 data, and learnable zero-shot."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from modeling_scegg.data import RegionFeatureReader, SyntheticConfig, generate_synthetic
from modeling_scegg.data.synthetic import build_world, render_images, split_labels

TINY = SyntheticConfig(num_classes=8, num_unseen=3, num_val=1, num_attributes=10, num_regions=4, feature_dim=16,
                       word_dim=12, train_images_per_class=6, test_seen_images_per_class=2, test_unseen_images_per_class=4)


def _per_class_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))


def ridge_czsl_accuracy(ds) -> float:
    """An honest baseline: ridge from mean-pooled features to class attributes on seen classes only,
    then the nearest unseen class attribute vector (cosine) on test_unseen; per-class accuracy."""
    sem = ds.semantics
    train, test = (ds.splits[s].with_format("numpy") for s in ("train", "test_unseen"))
    assert set(np.unique(train["label"])) <= set(sem.seen_class_ids)
    model = Ridge(alpha=1.0).fit(train["global_features"], sem.attributes[train["label"]])
    predicted = model.predict(test["global_features"])
    predicted /= np.linalg.norm(predicted, axis=1, keepdims=True)
    unseen = sem.unseen_class_ids
    return _per_class_accuracy(test["label"], unseen[np.argmax(predicted @ sem.attributes[unseen].T, axis=1)])


@pytest.fixture(scope="module")
def default_data():
    return generate_synthetic(SyntheticConfig())


def test_default_data_is_learnable_zero_shot(default_data):
    ds = default_data
    accuracy = ridge_czsl_accuracy(ds)
    chance = 1 / len(ds.semantics.unseen_class_ids)
    print(f"ridge CZSL per-class accuracy on default synthetic data: {accuracy:.3f} (chance {chance:.3f})")
    assert accuracy > 3 * chance


def test_shuffled_attributes_are_not_learnable(default_data):
    """Control: the same baseline with the class-attribute rows permuted falls to about chance."""
    permuted = default_data.semantics.attributes[np.random.default_rng(0).permutation(30)]
    ds = replace(default_data, semantics=replace(default_data.semantics, attributes=permuted))
    assert ridge_czsl_accuracy(ds) < 2 / len(ds.semantics.unseen_class_ids)


def test_default_structure(default_data):
    ds = default_data
    sem = ds.semantics
    assert (sem.num_classes, sem.num_attributes, sem.word_dim) == (30, 24, 300)
    assert (len(sem.seen_class_ids), len(sem.unseen_class_ids), len(sem.val_class_ids)) == (22, 8, 4)
    assert (ds.num_regions, ds.feature_dim) == (16, 128)
    sizes = {s: len(ds.splits[s]) for s in ds.splits}
    assert sizes == {"train": 880, "test_seen": 220, "test_unseen": 120, "train_sub": 720, "val": 160}
    assert 0.18 < sizes["test_seen"] / (sizes["train"] + sizes["test_seen"]) < 0.22
    np.testing.assert_allclose(np.linalg.norm(sem.attributes, axis=1), 1, atol=1e-5)
    assert sem.original_attributes.min() >= 0 and sem.original_attributes.max() <= 100
    assert set(np.unique(RegionFeatureReader(ds.splits["val"]).labels)) == set(sem.val_class_ids)
    assert not set(sem.val_class_ids) & set(RegionFeatureReader(ds.splits["train_sub"]).labels)


def test_features_are_post_relu_and_attributes_are_local():
    config = replace(TINY, noise=0.0, clutter=0.0, intensity_noise=0.0)
    world = build_world(config)
    ds = generate_synthetic(config)
    regions = RegionFeatureReader(ds.splits["train"]).take(np.arange(len(ds.splits["train"]))).astype(np.float32)
    assert regions.min() >= 0
    # Without clutter and noise every non-empty region is a sum of prototypes of attributes located there.
    allowed = np.zeros((config.num_regions, config.num_attributes), dtype=bool)
    for attribute, places in enumerate(world.locations):
        allowed[places, attribute] = True
    for region in range(config.num_regions):
        basis = world.prototypes[allowed[region]]
        coefficients, *_ = np.linalg.lstsq(basis.T, regions[:, region].T, rcond=None)
        np.testing.assert_allclose(basis.T @ coefficients, regions[:, region].T, atol=2e-2)


def test_unseen_classes_reuse_seen_attributes():
    world = build_world(SyntheticConfig())
    seen = np.setdiff1d(np.arange(30), world.unseen_class_ids)
    strong = world.original_attributes > 50
    assert strong[seen].any(axis=0).all()
    assert strong[world.unseen_class_ids].any(axis=1).all()


def test_deterministic_and_seed_dependent(tmp_path: Path):
    a = generate_synthetic(TINY, tmp_path / "a")
    b = generate_synthetic(TINY)
    c = generate_synthetic(replace(TINY, seed=1))
    def take(ds):
        return RegionFeatureReader(ds.splits["test_unseen"]).take(np.arange(12))
    np.testing.assert_array_equal(take(a), take(b))
    np.testing.assert_array_equal(a.semantics.word_vectors, b.semantics.word_vectors)
    assert not np.array_equal(take(a), take(c))
    assert a.splits["train"].cache_files and not b.splits["train"].cache_files


def test_split_sizes_override_and_cub_preset():
    config = replace(TINY, split_sizes=(31, 9, 7))
    labels = split_labels(config, build_world(config))
    assert [len(labels[s]) for s in ("train", "test_seen", "test_unseen")] == [31, 9, 7]
    assert len(np.unique(labels["train"])) == 5 and np.ptp(np.bincount(labels["train"])[np.unique(labels["train"])]) <= 1
    cub = SyntheticConfig.cub_size()
    assert cub.split_sizes == (7057, 1764, 2967) and (cub.num_regions, cub.feature_dim, cub.num_attributes) == (196, 2048, 312)
    assert (cub.num_classes, cub.num_unseen) == (200, 50)
    small = SyntheticConfig.cub_size(num_images=600)
    assert sum(small.split_sizes) == pytest.approx(600, abs=60)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_unseen": 8, "num_classes": 8}, "num_unseen"),
        ({"num_val": 5}, "num_val"),
        ({"locations_per_attribute": 5}, "locations_per_attribute"),
        ({"feature_dim": 0}, "feature_dim"),
        ({"split_sizes": (3, 5, 3)}, "split_sizes"),
        ({"attribute_density": 0.0}, "attribute_density"),
        ({"class_appearance": 1.5}, "class_appearance"),
        ({"class_signature": -1.0}, "class_signature"),
        ({"image_gain": -0.1}, "image_gain"),
        ({"scene_clutter": -1.0}, "scene_clutter"),
    ],
)
def test_config_errors(change, message):
    with pytest.raises(ValueError, match=f"SyntheticConfig.*{message}|{message}.*SyntheticConfig"):
        replace(TINY, **change)


def _seen_centroid_accuracy(ds) -> float:
    """Nearest class mean of mean-pooled features, seen classes only, on test_seen."""
    train, test = (ds.splits[s].with_format("numpy") for s in ("train", "test_seen"))
    x, y, test_x = np.asarray(train["global_features"]), np.asarray(train["label"]), np.asarray(test["global_features"])
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    distances = ((test_x[:, None] - means[None]) ** 2).sum(axis=-1)
    return _per_class_accuracy(np.asarray(test["label"]), classes[np.argmin(distances, axis=1)])


def test_class_looks_set_seen_classes_apart_beyond_their_attributes():
    """The visual-semantic gap: with class-specific attribute looks and class signatures the seen
    classes are easier to tell apart in the features than their attributes alone allow, while the
    unseen classes stay learnable zero-shot through the shared part of the looks."""
    base = replace(SyntheticConfig(), seed=1)
    plain = generate_synthetic(base)
    gap = generate_synthetic(replace(base, class_appearance=0.3, class_signature=0.3))
    assert build_world(base).class_prototypes is None  # off by default: the bytes of earlier versions
    assert _seen_centroid_accuracy(gap) > _seen_centroid_accuracy(plain) + 0.05
    assert ridge_czsl_accuracy(gap) > 2 / len(gap.semantics.unseen_class_ids)


def _render(config: SyntheticConfig, labels: np.ndarray) -> np.ndarray:
    return render_images(build_world(config), labels, config, np.random.default_rng(7))


def test_image_gain_scales_whole_images_and_nothing_else():
    """A gain per image changes the magnitude of every region of an image alike, so its
    normalised regions (what the SCEN attends over) are those of the same image without gain,
    while pooled features spread in norm by about the configured log-std."""
    labels = np.repeat(np.arange(TINY.num_classes), 50)
    plain, gained = _render(TINY, labels), _render(replace(TINY, image_gain=0.5), labels)
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    np.testing.assert_allclose(unit(gained), unit(plain), atol=1e-5)
    log_ratio = np.log(np.linalg.norm(gained.mean(axis=1), axis=-1) / np.linalg.norm(plain.mean(axis=1), axis=-1))
    assert 0.4 < log_ratio.std() < 0.6 and abs(np.exp(log_ratio).mean() - 1) < 0.1  # log-normal with mean 1


def test_scene_clutter_fills_only_the_regions_without_attributes():
    """The scene is one background per image, drawn where no attribute is: with clutter and noise
    off, it is all that differs from the same images without it."""
    quiet = replace(TINY, clutter=0.0, noise=0.0, intensity_noise=0.0)
    labels = np.repeat(np.arange(TINY.num_classes), 20)
    plain, scene = _render(quiet, labels), _render(replace(quiet, scene_clutter=1.0), labels)
    added = scene - plain
    empty = np.abs(plain).sum(axis=-1) == 0
    assert empty.any() and (~empty).any()
    assert np.abs(added[~empty]).max() == 0
    backgrounds = build_world(quiet).backgrounds
    with_scene = np.flatnonzero(empty.any(axis=1) & (np.abs(added).sum(axis=(1, 2)) > 0))
    assert len(with_scene) > 0.9 * empty.any(axis=1).sum()
    for image in with_scene:
        directions = added[image][empty[image]]
        directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
        assert np.allclose(directions, directions[0], atol=1e-5)  # one scene per image
        unit_backgrounds = backgrounds / np.linalg.norm(backgrounds, axis=-1, keepdims=True)
        assert np.isclose(unit_backgrounds @ directions[0], 1.0, atol=1e-5).any()  # and it is a background
