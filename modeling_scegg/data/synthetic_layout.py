"""Synthetic region features for the classes of a real benchmark, written in the standard layout.

The images (and region features) of CUB, SUN and AWA2 are tens of gigabytes and cannot be fetched
here, but their class metadata is small: ``att_splits.mat`` (class attributes, names, the proposed
split) and the attribute word vectors. :func:`write_synthetic_benchmark` keeps all of that real
(classes, attributes, word vectors, split sizes, the images' positions in each split) and renders
only the region features, with the generator of :mod:`.synthetic`: an image samples each
attribute with its class's real attribute strength and draws the attribute's visual prototype
into one of its regions. The result is written as the files of the real benchmark
(``xlsa17/data/<DS>/att_splits.mat``, ``<DS>/feature_map_ResNet_101_<DS>.hdf5``,
``w2v/<DS>_attribute.*``), so ``load_zsl_dataset(DS, data_dir=...)`` reads it through exactly the
path real data takes. Benchmarks use it to compare training setups on the real class structure
(e.g. AWA2's 40 seen / 10 unseen classes with ~600 images each); it says nothing about accuracy
on real images.

Which classes are unseen is not in ``att_splits.mat`` (it follows from ``res101.mat``'s labels),
so the unseen (and validation) classes are drawn from the seed, with the benchmark's real counts.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.io

from ..atomic import atomic_path
from ..optional import import_optional
from .synthetic import (
    SyntheticConfig,
    SyntheticWorld,
    class_ingredients,
    render_images,
    spread,
    visual_ingredients,
)
from .word_vectors import load_word_vectors
from .xlsa17 import candidate_files, read_att_splits

# Unseen classes of the xlsa17 proposed splits (Xian et al.), and the share of seen classes that
# its train_loc / val_loc hold out as validation classes where a copy lacks them (CUB: 50 of 150).
PROPOSED_UNSEEN_CLASSES = {"CUB": 50, "SUN": 72, "AWA2": 10, "AWA1": 10, "APY": 12, "FLO": 20}
DEFAULT_VAL_SHARE = 1 / 3
_WRITE_BLOCK_BYTES = 32 * 2**20


def _metadata_files(name: str, metadata_dir: Path) -> tuple[Path, Path]:
    """att_splits.mat and the word vectors, where :func:`.xlsa17.candidate_files` looks for them."""
    candidates = candidate_files(metadata_dir, name)
    att_splits = next((p for p in candidates["att_splits"] if p.is_file()), None)
    if att_splits is None:
        raise FileNotFoundError(f"{name}: no xlsa17/{name}/att_splits.mat (or xlsa17/data/{name}/) under {metadata_dir}")
    words = next((p for p in candidates["word_vectors"] if p.is_file()), None)
    if words is None:
        raise FileNotFoundError(f"{name}: no w2v/{name}_attribute.pkl (.npy, .safetensors) under {metadata_dir}")
    return att_splits, words


def _deal(images: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> dict[int, int]:
    """Image -> class, as evenly as possible (:func:`.synthetic.spread`): the images shuffled and
    dealt to the classes in turn, the i-th to class i mod C (the order the layouts were always
    written in, so a seed gives the same labels as before)."""
    images = rng.permutation(images)
    in_turn = np.argsort(np.arange(len(images)) % len(classes), kind="stable")
    return dict(zip(images[in_turn].tolist(), spread(len(images), classes).tolist()))


def assign_labels(
    locs: dict[str, np.ndarray], num_classes: int, num_unseen: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Per-image labels consistent with the split structure: unseen classes own test_unseen,
    seen classes own trainval + test_seen, and of those the validation classes own val_loc.

    Where the file has train_loc / val_loc their sizes give the number of validation classes;
    otherwise a third of the seen classes and a matching share of the seen images become the
    validation split. Returns (locs with train_loc / val_loc, labels (N,), unseen ids, val ids)."""
    has_val = "val_loc" in locs and "train_loc" in locs
    share = len(locs["val_loc"]) / (len(locs["val_loc"]) + len(locs["train_loc"])) if has_val else DEFAULT_VAL_SHARE
    order = rng.permutation(num_classes)
    unseen, seen = np.sort(order[:num_unseen]), order[num_unseen:]
    num_val = max(1, int(len(seen) * share + 0.5))
    val, train = np.sort(seen[:num_val]), seen[num_val:]
    if not has_val:
        seen_images = rng.permutation(np.concatenate([locs["trainval_loc"], locs["test_seen_loc"]]))
        cut = int(len(seen_images) * num_val / len(seen) + 0.5)
        locs = {**locs, "val_loc": np.sort(seen_images[:cut]), "train_loc": np.sort(seen_images[cut:])}
    assignment = _deal(locs["test_unseen_loc"], unseen, rng)
    assignment.update(_deal(locs["val_loc"], val, rng))
    assignment.update(_deal(locs["train_loc"], train, rng))
    labels = np.full(1 + max(int(v.max()) for v in locs.values()), -1, dtype=np.int64)
    labels[list(assignment)] = list(assignment.values())
    if (labels < 0).any():
        raise ValueError(f"{int((labels < 0).sum())} images are in no split of att_splits.mat")
    return locs, labels, unseen, val


def subsample_locs(locs: dict[str, np.ndarray], fraction: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random `fraction` of the images, every split shrunk alike and renumbered 0..M-1 (splits
    that share images, like trainval and train / val, keep sharing them): the same class
    structure at a fraction of the training cost."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    every = np.unique(np.concatenate(list(locs.values())))
    kept = np.sort(rng.choice(every, max(1, int(round(fraction * len(every)))), replace=False))
    return {name: np.searchsorted(kept, np.intersect1d(loc, kept)) for name, loc in locs.items()}


def _class_strengths(original: np.ndarray) -> np.ndarray:
    """Attribute strengths in [0, 100] (CUB is 0-100 already, SUN 0-1, AWA2 -1..100)."""
    clipped = np.clip(original, 0.0, None)
    return (100.0 * clipped / max(float(clipped.max()), 1e-12)).astype(np.float32)


def _write_feature_map(path: Path, world: SyntheticWorld, labels: np.ndarray, config: SyntheticConfig,
                       grid: tuple[int, int]) -> None:
    """Render every image and store (N, D, H, W) float32 like the common preprocessing does."""
    height, width = grid
    step = max(1, _WRITE_BLOCK_BYTES // (config.num_regions * config.feature_dim * 4))
    h5py = import_optional("h5py", "hdf5", "writing the HDF5 region features of the synthetic layout")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        maps = f.create_dataset("feature_map", (len(labels), config.feature_dim, height, width), dtype="float32")
        for chunk, begin in enumerate(range(0, len(labels), step)):
            block = labels[begin:begin + step]
            regions = render_images(world, block, config, np.random.default_rng([config.seed, 2, chunk]))
            maps[begin:begin + len(block)] = regions.transpose(0, 2, 1).reshape(len(block), config.feature_dim, height, width)
        f.create_dataset("labels", data=labels)


def write_synthetic_benchmark(
    name: str,
    metadata_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    grid: tuple[int, int] = (4, 4),
    feature_dim: int = 128,
    num_unseen: int | None = None,
    seed: int = 0,
    render: SyntheticConfig | None = None,
    fraction: float = 1.0,
) -> Path:
    """Write benchmark `name` (its real att_splits.mat and word vectors under `metadata_dir`)
    with synthetic region features of `grid` regions x `feature_dim` channels to `out_dir`, in
    the standard layout; returns `out_dir`. `render` sets the generator's noise and clutter
    (its sizes are replaced by the benchmark's); `num_unseen` defaults to the proposed split's;
    `fraction` keeps that share of the images (`subsample_locs`), for cheaper benchmarks."""
    metadata_dir, out_dir = Path(metadata_dir), Path(out_dir)
    if num_unseen is None and name not in PROPOSED_UNSEEN_CLASSES:
        raise ValueError(f"{name}: pass num_unseen (known benchmarks: {sorted(PROPOSED_UNSEEN_CLASSES)})")
    att_path, words_path = _metadata_files(name, metadata_dir)
    table, locs = read_att_splits(att_path)
    word_vectors = load_word_vectors(words_path)
    num_classes, num_attributes = table.attributes.shape
    rng = np.random.default_rng([seed, 3])
    if fraction < 1:
        locs = subsample_locs(locs, fraction, np.random.default_rng([seed, 5]))
    locs, labels, unseen, val = assign_labels(locs, num_classes, num_unseen or PROPOSED_UNSEEN_CLASSES[name], rng)
    config = replace(render or SyntheticConfig(), num_classes=num_classes, num_unseen=len(unseen), num_val=len(val),
                     num_attributes=num_attributes, num_regions=grid[0] * grid[1], feature_dim=feature_dim,
                     word_dim=word_vectors.shape[1], split_sizes=None, seed=seed)
    prototypes, backgrounds, locations = visual_ingredients(config, np.random.default_rng([seed, 0]))
    class_prototypes, signatures = class_ingredients(config, prototypes, np.random.default_rng([seed, 4]))
    world = SyntheticWorld(prototypes=prototypes.astype(np.float32), backgrounds=backgrounds.astype(np.float32),
                           locations=locations, original_attributes=_class_strengths(table.original_attributes),
                           word_vectors=word_vectors, unseen_class_ids=unseen, val_class_ids=val,
                           class_prototypes=class_prototypes, signatures=signatures)
    xlsa = out_dir / "xlsa17" / "data" / name
    xlsa.mkdir(parents=True, exist_ok=True)
    (out_dir / name).mkdir(exist_ok=True)
    (out_dir / "w2v").mkdir(exist_ok=True)
    _write_feature_map(out_dir / name / f"feature_map_ResNet_101_{name}.hdf5", world, labels, config, grid)
    mat = scipy.io.loadmat(str(att_path))
    mat = {k: v for k, v in mat.items() if not k.startswith("__")}
    mat.update({k: (np.sort(v) + 1).reshape(-1, 1).astype(np.float64) for k, v in locs.items()})
    with atomic_path(xlsa / "att_splits.mat") as tmp, open(tmp, "wb") as f:
        scipy.io.savemat(f, mat)
    shutil.copyfile(words_path, out_dir / "w2v" / words_path.name)
    return out_dir
