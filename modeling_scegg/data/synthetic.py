"""A synthetic zero-shot benchmark with the structure of the real ones, generated from a seed.

Real ZSL data cannot be downloaded here, and tests need something small that a model can
actually learn zero-shot. The generator builds a tiny "visual world" with the properties SC-EGG
relies on:

* every attribute has a visual prototype (a non-negative direction in the D channels) and a few
  region locations where it can appear (a bird's crown is at the top, its legs at the bottom);
* classes are continuous attribute vectors (an ``original_att``-like 0-100 matrix, and its
  L2-normalised rows as ``att``); unseen classes are new combinations of the same attributes,
  which is what makes zero-shot transfer possible;
* an image of class c samples each attribute with probability ``original_att[c, a] / 100`` and
  draws the prototype of each present attribute (scaled by a noisy intensity) into one of that
  attribute's regions; every region also gets background clutter and Gaussian noise, and the
  result is clipped at 0 like a post-ReLU ResNet map;
* attribute word vectors are a fixed random projection of the prototypes plus noise, so related
  attributes have related word vectors, as with GloVe;
* optionally, two properties of region features of real pictures that attribute vectors do not
  capture: an attribute looks different on different classes (``class_appearance``: a zebra's
  stripes are not a tiger's), and every class has a look of its own that no attribute describes
  (``class_signature``: the visual-semantic gap, which makes seen classes far easier to tell apart
  in the features than in their attribute vectors, and cannot be generated for unseen classes);
* optionally, a gain per image (``image_gain``: the standard deviation of its log): the same
  scene gives CNN activations of very different magnitudes with the picture's contrast, exposure
  and the object's size, which a pooled feature carries and normalised regions do not;
* optionally, a scene behind the object (``scene_clutter``: its strength): one background per
  image, drawn into every region that holds no attribute, so a pooled feature mixes the object
  with whatever it was photographed in, and only attention to the attributes' regions leaves it.

Splits mirror xlsa17: trainval ("train") and test_seen from the seen classes (about 20% of their
images in test_seen), test_unseen from the unseen classes, and train_sub / val where val holds
the trainval images of a few seen classes acting as pseudo-unseen classes. Images are rendered
in fixed-size chunks from per-chunk seeds, so a CUB-sized set streams to disk without ever being
held in memory and the same config always gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse
from datasets import Dataset, DatasetDict

from .converted import open_converted, save_converted
from .semantics import ClassSemantics, ZSLDataset, build_semantics
from .store import (
    GLOBAL_COLUMN,
    LABEL_COLUMN,
    REGION_COLUMN,
    region_feature_features,
    write_split,
)

# Bump when the generator's output for a given config changes, so caches are not reused.
GENERATOR_VERSION = 2
# Images are rendered in chunks of ~16 MiB of float32: big enough for fast GEMMs, small enough
# that the allocator reuses the buffers instead of faulting in fresh pages for every chunk.
_CHUNK_BYTES = 16 * 2**20
_SPLIT_CODES = {"train": 0, "test_seen": 1, "test_unseen": 2}


@dataclass
class SyntheticConfig:
    """Sizes and difficulty of the synthetic benchmark; every size can be changed.

    The defaults are small enough for the three training stages to run in minutes on two CPU
    cores while leaving zero-shot accuracy well below 100% (see tests/test_data_synthetic.py).
    ``split_sizes`` (trainval, test_seen, test_unseen totals) overrides the per-class counts,
    spreading images over classes as evenly as possible.
    """

    num_classes: int = 30
    num_unseen: int = 8
    num_val: int = 4
    num_attributes: int = 24
    num_regions: int = 16
    feature_dim: int = 128
    word_dim: int = 300
    train_images_per_class: int = 40
    test_seen_images_per_class: int = 10
    test_unseen_images_per_class: int = 15
    split_sizes: tuple[int, int, int] | None = None
    attribute_density: float = 0.35
    locations_per_attribute: int = 2
    prototype_density: float = 0.25
    num_background: int = 8
    noise: float = 0.3
    intensity_noise: float = 0.3
    clutter: float = 0.6
    word_noise: float = 0.5
    class_appearance: float = 0.0
    class_signature: float = 0.0
    image_gain: float = 0.0
    scene_clutter: float = 0.0
    with_global: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split_sizes is not None:
            self.split_sizes = tuple(int(s) for s in self.split_sizes)
        self.validate()

    def validate(self) -> None:
        """Refuse configs that cannot form a ZSL benchmark, naming the field and the value."""
        positive = ("num_classes", "num_unseen", "num_attributes", "num_regions", "feature_dim", "word_dim",
                    "locations_per_attribute", "num_background")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_unseen >= self.num_classes:
            raise ValueError(f"SyntheticConfig.num_unseen ({self.num_unseen}) must be < num_classes ({self.num_classes})")
        num_seen = self.num_classes - self.num_unseen
        if not 0 <= self.num_val < num_seen:
            raise ValueError(f"SyntheticConfig.num_val must lie in [0, {num_seen}) (seen classes), got {self.num_val}")
        if self.locations_per_attribute > self.num_regions:
            raise ValueError(
                f"SyntheticConfig.locations_per_attribute ({self.locations_per_attribute}) exceeds "
                f"num_regions ({self.num_regions})"
            )
        for name in ("attribute_density", "prototype_density"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"SyntheticConfig.{name} must lie in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.class_appearance <= 1:
            raise ValueError(f"SyntheticConfig.class_appearance must lie in [0, 1], got {self.class_appearance}")
        for name in ("class_signature", "image_gain", "scene_clutter"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticConfig.{name} must be >= 0, got {getattr(self, name)}")
        counts = self.split_sizes or (self.train_images_per_class, self.test_seen_images_per_class,
                                      self.test_unseen_images_per_class)
        if len(counts) != 3 or min(counts) < 1:
            raise ValueError(f"SyntheticConfig needs >= 1 image in trainval, test_seen and test_unseen, got {counts}")
        if self.split_sizes is not None:
            too_few = [(n, k) for n, k in zip(self.split_sizes, (num_seen, num_seen, self.num_unseen)) if n < k]
            if too_few:
                raise ValueError(f"SyntheticConfig.split_sizes {self.split_sizes} gives some class no image "
                                 "(need >= 1 per class)")

    @classmethod
    def cub_size(cls, num_images: int = 11788, seed: int = 0) -> "SyntheticConfig":
        """CUB's shapes (200 classes 150/50, A = 312, 14 x 14 x 2048 regions) for benchmarks.

        ``num_images`` scales CUB's 7057 / 1764 / 2967 split sizes down (or up) proportionally.
        """
        full = np.array([7057, 1764, 2967])
        sizes = np.maximum(np.round(full * num_images / full.sum()).astype(int), [150, 150, 50])
        return cls(
            num_classes=200, num_unseen=50, num_val=0, num_attributes=312, num_regions=196, feature_dim=2048,
            split_sizes=tuple(int(s) for s in sizes), seed=seed,
        )

    def fingerprint(self) -> str:
        """Hash of everything that determines the generated bytes (used as the cache key)."""
        payload = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class SyntheticWorld:
    """The fixed, seed-determined ingredients every image is rendered from."""

    prototypes: np.ndarray          # (A, D) unit-norm non-negative attribute prototypes
    backgrounds: np.ndarray         # (K, D) clutter prototypes
    locations: np.ndarray           # (A, L) region indices where each attribute can appear
    original_attributes: np.ndarray  # (C, A) in [0, 100]
    word_vectors: np.ndarray        # (A, dv)
    unseen_class_ids: np.ndarray
    val_class_ids: np.ndarray
    class_prototypes: np.ndarray | None = None  # (C, A, D) with class_appearance: each class's look of each attribute
    signatures: np.ndarray | None = None        # (C, D) with class_signature: each class's look no attribute names


def _sparse_directions(rng: np.random.Generator, rows: int, dim: int, density: float) -> np.ndarray:
    """Non-negative unit vectors with about ``density`` active channels (like post-ReLU features)."""
    values = np.abs(rng.standard_normal((rows, dim))) * (rng.random((rows, dim)) < density)
    values[np.arange(rows), rng.integers(0, dim, rows)] += 1.0  # never an all-zero direction
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def _class_attributes(rng: np.random.Generator, config: SyntheticConfig, seen: np.ndarray) -> np.ndarray:
    """(C, A) raw attribute strengths; resampled until classes are distinct and every attribute is seen."""
    for _ in range(1000):
        active = rng.random((config.num_classes, config.num_attributes)) < config.attribute_density
        strength = np.where(active, rng.uniform(60, 100, active.shape), rng.uniform(0, 10, active.shape))
        unit = strength / np.linalg.norm(strength, axis=1, keepdims=True)
        distinct = np.abs(unit @ unit.T - np.eye(len(unit))).max() < 0.85
        if active[seen].any(axis=0).all() and active.any(axis=1).all() and distinct:
            return strength
    raise ValueError(
        f"could not draw {config.num_classes} distinct classes over {config.num_attributes} attributes "
        f"with attribute_density={config.attribute_density}; use more attributes or another density"
    )


def visual_ingredients(config: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attribute prototypes (A, D), background prototypes (K, D) and the regions (A, L) where
    each attribute can appear: the part of the world that does not depend on the classes."""
    prototypes = _sparse_directions(rng, config.num_attributes, config.feature_dim, config.prototype_density)
    backgrounds = _sparse_directions(rng, config.num_background, config.feature_dim, config.prototype_density)
    locations = np.stack(
        [rng.choice(config.num_regions, config.locations_per_attribute, replace=False) for _ in range(config.num_attributes)]
    )
    return prototypes, backgrounds, locations


def class_ingredients(config: SyntheticConfig, prototypes: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-class attribute prototypes (C, A, D), a mix of the shared prototype and a class's own
    direction in the share ``class_appearance``, and class signatures (C, D); None where the
    config leaves the property off (the rendered bytes are then those of earlier versions)."""
    class_prototypes = signatures = None
    if config.class_appearance:
        own = _sparse_directions(rng, config.num_classes * config.num_attributes, config.feature_dim,
                                 config.prototype_density).reshape(config.num_classes, config.num_attributes, -1)
        mixed = (1 - config.class_appearance) * prototypes[None] + config.class_appearance * own
        class_prototypes = (mixed / np.linalg.norm(mixed, axis=-1, keepdims=True)).astype(np.float32)
    if config.class_signature:
        signatures = _sparse_directions(rng, config.num_classes, config.feature_dim, config.prototype_density)
        signatures = signatures.astype(np.float32)
    return class_prototypes, signatures


def build_world(config: SyntheticConfig) -> SyntheticWorld:
    """Draw prototypes, attribute locations, class attributes, word vectors and the class split."""
    rng = np.random.default_rng([config.seed, 0])
    unseen = np.sort(rng.choice(config.num_classes, config.num_unseen, replace=False))
    seen = np.setdiff1d(np.arange(config.num_classes), unseen)
    val = np.sort(rng.choice(seen, config.num_val, replace=False)) if config.num_val else np.zeros(0, dtype=np.int64)
    prototypes, backgrounds, locations = visual_ingredients(config, rng)
    original = _class_attributes(rng, config, seen)
    projection = rng.standard_normal((config.feature_dim, config.word_dim)) / np.sqrt(config.prototype_density)
    words = prototypes @ projection + config.word_noise * rng.standard_normal((config.num_attributes, config.word_dim))
    class_prototypes, signatures = class_ingredients(config, prototypes, np.random.default_rng([config.seed, 4]))
    return SyntheticWorld(
        prototypes=prototypes.astype(np.float32),
        backgrounds=backgrounds.astype(np.float32),
        locations=locations,
        original_attributes=original.astype(np.float32),
        word_vectors=words.astype(np.float32),
        unseen_class_ids=unseen.astype(np.int64),
        val_class_ids=val.astype(np.int64),
        class_prototypes=class_prototypes,
        signatures=signatures,
    )


def spread(total: int, classes: np.ndarray) -> np.ndarray:
    """`total` labels over `classes` as evenly as possible (the first classes take the remainder,
    one each), class-major: every image of the first class, then the next, ..."""
    counts = np.full(len(classes), total // len(classes))
    counts[: total % len(classes)] += 1
    return np.repeat(classes, counts)


def split_labels(config: SyntheticConfig, world: SyntheticWorld) -> dict[str, np.ndarray]:
    """Labels of each split in class-major order (like xlsa17's image order)."""
    seen = np.setdiff1d(np.arange(config.num_classes), world.unseen_class_ids)
    if config.split_sizes is not None:
        train, test_seen, test_unseen = config.split_sizes
        return {
            "train": spread(train, seen),
            "test_seen": spread(test_seen, seen),
            "test_unseen": spread(test_unseen, world.unseen_class_ids),
        }
    return {
        "train": np.repeat(seen, config.train_images_per_class),
        "test_seen": np.repeat(seen, config.test_seen_images_per_class),
        "test_unseen": np.repeat(world.unseen_class_ids, config.test_unseen_images_per_class),
    }


def render_images(world: SyntheticWorld, labels: np.ndarray, config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """(n, R, D) float32 non-negative region features for images of classes ``labels``."""
    n, num_attributes = len(labels), config.num_attributes
    probability = world.original_attributes[labels] / 100.0
    present = rng.random((n, num_attributes)) < probability
    intensity = np.clip(1.0 + config.intensity_noise * rng.standard_normal((n, num_attributes)), 0.1, None)
    choice = rng.integers(0, config.locations_per_attribute, (n, num_attributes))
    region = world.locations[np.arange(num_attributes)[None, :], choice]
    # Placement weights (n*R, A) are ~1% non-zero: a sparse product draws every present attribute
    # (with class-specific looks, over (n*R, C*A): the column names the class's own prototype).
    rows, cols = np.nonzero(present)
    prototypes, columns = world.prototypes, cols
    if world.class_prototypes is not None:
        prototypes = world.class_prototypes.reshape(-1, config.feature_dim)
        columns = labels[rows] * num_attributes + cols
    placement = scipy.sparse.csr_matrix(
        (intensity[rows, cols].astype(np.float32), (rows * config.num_regions + region[rows, cols], columns)),
        shape=(n * config.num_regions, len(prototypes)),
    )
    images = np.asarray(placement @ prototypes, dtype=np.float32).reshape(n, config.num_regions, config.feature_dim)
    if config.scene_clutter:
        _draw_scene(images, np.diff(placement.indptr).reshape(n, -1) == 0, world.backgrounds, config, rng)
    # In-place updates: at CUB size every temporary is tens of MB.
    clutter = world.backgrounds[rng.integers(0, config.num_background, (n, config.num_regions))]
    clutter *= config.clutter * rng.random((n, config.num_regions, 1), dtype=np.float32)
    images += clutter
    if world.signatures is not None:  # the class's own look, spread unevenly over the regions
        weight = config.class_signature * rng.random((n, config.num_regions, 1), dtype=np.float32)
        images += weight * world.signatures[labels][:, None]
    # Uniform noise with the standard deviation of N(0, scale^2): 5x cheaper to draw than Gaussian.
    noise = rng.random(images.shape, dtype=np.float32, out=clutter)
    noise -= 0.5
    noise *= np.float32(np.sqrt(12.0) * config.noise / np.sqrt(config.prototype_density * config.feature_dim))
    images += noise
    if config.image_gain:  # log-normal with mean 1, one draw per image
        log_gain = config.image_gain * rng.standard_normal((n, 1, 1), dtype=np.float32) - config.image_gain**2 / 2
        images *= np.exp(log_gain)
    return np.maximum(images, 0.0, out=images)


def _draw_scene(images: np.ndarray, empty: np.ndarray, backgrounds: np.ndarray, config: SyntheticConfig,
                rng: np.random.Generator) -> None:
    """Add one background per image, at a random strength per image, to its `empty` (n, R) regions."""
    n = len(images)
    scene = backgrounds[rng.integers(0, config.num_background, n)]
    strength = config.scene_clutter * rng.random(n, dtype=np.float32)
    images += (empty * strength[:, None])[:, :, None] * scene[:, None, :]


def iter_split(config: SyntheticConfig, world: SyntheticWorld, split: str, labels: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    """Batches of one split for write_split; each chunk has its own seed, so output is reproducible."""
    step = max(1, _CHUNK_BYTES // (config.num_regions * config.feature_dim * 4))
    for chunk, begin in enumerate(range(0, len(labels), step)):
        chunk_labels = labels[begin : begin + step]
        rng = np.random.default_rng([config.seed, 1, _SPLIT_CODES[split], chunk])
        regions = render_images(world, chunk_labels, config, rng)
        batch = {REGION_COLUMN: regions, LABEL_COLUMN: chunk_labels}
        if config.with_global:
            batch[GLOBAL_COLUMN] = regions.mean(axis=1)
        yield batch


def _names(prefix: str, count: int) -> list[str]:
    width = len(str(count - 1))
    return [f"{prefix}_{i:0{width}d}" for i in range(count)]


def synthetic_semantics(config: SyntheticConfig, world: SyntheticWorld) -> tuple[ClassSemantics, dict[str, np.ndarray]]:
    """Class semantics plus positions of train_sub / val inside the train split."""
    labels = split_labels(config, world)
    subsets = {}
    if config.num_val:
        is_val = np.isin(labels["train"], world.val_class_ids)
        subsets = {"train_sub": np.flatnonzero(~is_val), "val": np.flatnonzero(is_val)}
    semantics = build_semantics(
        attributes=world.original_attributes,
        original_attributes=world.original_attributes,
        class_names=_names("class", config.num_classes),
        split_labels={**labels, **{name: labels["train"][pos] for name, pos in subsets.items()}},
        word_vectors=world.word_vectors,
        attribute_names=_names("attribute", config.num_attributes),
        source="synthetic",
    )
    return semantics, subsets


def write_synthetic_splits(config: SyntheticConfig, out_dir: str | os.PathLike) -> tuple[ClassSemantics, dict[str, np.ndarray]]:
    """Render every split into ``out_dir/<split>`` (finished splits are kept) and return the semantics."""
    out_dir = Path(out_dir)
    world = build_world(config)
    semantics, subsets = synthetic_semantics(config, world)
    features = region_feature_features(config.num_regions, config.feature_dim, semantics.class_names, config.with_global)
    for split, labels in split_labels(config, world).items():
        if not (out_dir / split).is_dir():
            write_split(iter_split(config, world, split, labels), features, out_dir / split, num_rows=len(labels),
                        desc=f"synthetic {split}")
    return semantics, subsets


def generate_synthetic(config: SyntheticConfig | None = None, out_dir: str | os.PathLike | None = None) -> ZSLDataset:
    """The synthetic benchmark, written to ``out_dir`` (memory-mapped) or, without it, held in memory.

    ``load_zsl_dataset("synthetic")`` is the cached way to get it; this function always renders.
    """
    config = config or SyntheticConfig()
    if out_dir is not None:
        semantics, subsets = write_synthetic_splits(config, out_dir)
        save_converted(out_dir, "synthetic", semantics, subsets, {"synthetic_config": asdict(config)})
        return open_converted(out_dir)
    world = build_world(config)
    semantics, subsets = synthetic_semantics(config, world)
    features = region_feature_features(config.num_regions, config.feature_dim, semantics.class_names, config.with_global)
    splits = {}
    for split, labels in split_labels(config, world).items():
        batches = list(iter_split(config, world, split, labels))
        columns = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
        columns[REGION_COLUMN] = columns[REGION_COLUMN].astype(np.float16)
        splits[split] = Dataset.from_dict(columns, features=features)
    for name, positions in subsets.items():
        splits[name] = splits["train"].select(positions)
    return ZSLDataset(name="synthetic", splits=DatasetDict(splits), semantics=semantics)
