"""ZSL datasets as Hugging Face dataset repos: plain Parquet plus a README ``configs:`` block.

datasets 5 runs no loading scripts, so a benchmark is published as three configs that the stock
``datasets.load_dataset(repo, config)`` understands:

* ``features``: splits train (= trainval), test_seen, test_unseen (and train_sub, val when the
  benchmark defines a validation split) with ``region_features`` Array2D(R, D) float16, ``label``
  ClassLabel and optionally ``global_features``;
* ``classes``: one row per class: ``class_id``, ``class_name``, ``attributes`` (the L2-normalised
  class vector), ``is_unseen`` (and ``original_attributes`` when known);
* ``attributes``: one row per attribute: ``attribute_name`` and ``word_vector`` (when known).

:func:`save_zsl_dataset_to_hub_layout` writes such a folder (ready for
``huggingface_hub.upload_folder``); :func:`iter_hub_layout` reads a local folder or Hub id back
as streamed Arrow batches, which the loader converts into its Arrow cache like any other source.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
from datasets import Dataset, Features, IterableDataset, List, Value, load_dataset
from huggingface_hub import DatasetCard, DatasetCardData

from .semantics import (
    REQUIRED_SPLITS,
    VALIDATION_SPLITS,
    ClassSemantics,
    ZSLDataset,
    build_semantics,
)
from .store import (
    GLOBAL_COLUMN,
    LABEL_COLUMN,
    REGION_COLUMN,
    load_split,
    region_feature_features,
    region_shape,
    region_values,
    replace_dir,
    write_split,
)

FEATURES_CONFIG = "features"
CLASSES_CONFIG = "classes"
ATTRIBUTES_CONFIG = "attributes"
TABLE_SPLIT = "train"  # the single split name datasets gives the classes / attributes tables
# The layout's schema: the columns each config must have for the loader to read it (written by
# save_zsl_dataset_to_hub_layout, checked before a push); global_features, original_attributes
# and word_vector come along only where the benchmark has them.
REQUIRED_COLUMNS = {
    FEATURES_CONFIG: (REGION_COLUMN, LABEL_COLUMN),
    CLASSES_CONFIG: ("class_id", "class_name", "attributes", "is_unseen"),
    ATTRIBUTES_CONFIG: ("attribute_name",),
}
# Parquet shards of ~256 MiB of float16 features, and row groups small enough to stream.
_SHARD_BYTES = 256 * 2**20
_ROW_GROUP_BYTES = 32 * 2**20


def _shard_count(dataset: Dataset) -> int:
    num_regions, feature_dim = region_shape(dataset.features)
    return max(1, int(np.ceil(len(dataset) * num_regions * feature_dim * 2 / _SHARD_BYTES)))


def _write_parquet_shards(dataset: Dataset, folder: Path, split: str, rows_per_group: int) -> list[str]:
    """Write ``split-0000i-of-0000n.parquet`` shards; returns their paths relative to the repo root."""
    count = _shard_count(dataset) if REGION_COLUMN in dataset.features else 1
    paths = []
    for index in range(count):
        name = f"{split}-{index:05d}-of-{count:05d}.parquet"
        dataset.shard(count, index, contiguous=True).to_parquet(str(folder / name), batch_size=rows_per_group)
        paths.append(f"{folder.name}/{name}")
    return paths


def _classes_table(semantics: ClassSemantics) -> Dataset:
    unseen = np.zeros(semantics.num_classes, dtype=bool)
    unseen[semantics.unseen_class_ids] = True
    columns = {
        "class_id": np.arange(semantics.num_classes, dtype=np.int64),
        "class_name": semantics.class_names,
        "attributes": semantics.attributes.astype(np.float32),
        "is_unseen": unseen,
    }
    features = {
        "class_id": Value("int64"),
        "class_name": Value("string"),
        "attributes": List(Value("float32"), length=semantics.num_attributes),
        "is_unseen": Value("bool"),
    }
    if semantics.original_attributes is not None:
        columns["original_attributes"] = semantics.original_attributes.astype(np.float32)
        features["original_attributes"] = List(Value("float32"), length=semantics.num_attributes)
    return Dataset.from_dict(columns, features=Features(features))


def _attributes_table(semantics: ClassSemantics) -> Dataset:
    names = semantics.attribute_names or [f"attribute_{i}" for i in range(semantics.num_attributes)]
    columns = {"attribute_name": names}
    features = {"attribute_name": Value("string")}
    if semantics.word_vectors is not None:
        columns["word_vector"] = semantics.word_vectors.astype(np.float32)
        features["word_vector"] = List(Value("float32"), length=semantics.word_dim)
    return Dataset.from_dict(columns, features=Features(features))


def _readme(name: str, data_files: dict[str, dict[str, list[str]]], semantics: ClassSemantics, sizes: dict[str, int]) -> str:
    configs = [
        {"config_name": config, "data_files": [{"split": split, "path": paths} for split, paths in splits.items()]}
        for config, splits in data_files.items()
    ]
    card_data = DatasetCardData(pretty_name=name, configs=configs, tags=["zero-shot-learning", "scegg"])
    split_lines = "\n".join(f"| {split} | {count} |" for split, count in sizes.items())
    body = (
        f"# {name}: region features for zero-shot learning\n\n"
        f"{semantics.num_classes} classes ({len(semantics.seen_class_ids)} seen / {len(semantics.unseen_class_ids)} unseen), "
        f"{semantics.num_attributes} attributes. Written by `scegg` (`modeling_scegg.data.save_zsl_dataset_to_hub_layout`); "
        "load it with `modeling_scegg.data.load_zsl_dataset(<repo or folder>)` or, table by table, with "
        "`datasets.load_dataset(<repo or folder>, \"features\" | \"classes\" | \"attributes\")`.\n\n"
        f"| split | images |\n|---|---|\n{split_lines}\n"
    )
    return str(DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))


def save_zsl_dataset_to_hub_layout(ds: ZSLDataset, folder: str | os.PathLike) -> Path:
    """Write ``ds`` as a dataset repo folder (Parquet + README configs), atomically replacing ``folder``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        for sub in (FEATURES_CONFIG, CLASSES_CONFIG, ATTRIBUTES_CONFIG):
            (tmp / sub).mkdir(parents=True)
        num_regions, feature_dim = region_shape(ds.splits["train"].features)
        rows_per_group = max(1, _ROW_GROUP_BYTES // (num_regions * feature_dim * 2))
        order = [s for s in REQUIRED_SPLITS + VALIDATION_SPLITS if s in ds.splits]
        data_files = {FEATURES_CONFIG: {s: _write_parquet_shards(ds.splits[s], tmp / FEATURES_CONFIG, s, rows_per_group)
                                        for s in order}}
        data_files[CLASSES_CONFIG] = {
            TABLE_SPLIT: _write_parquet_shards(_classes_table(ds.semantics), tmp / CLASSES_CONFIG, TABLE_SPLIT, 1000)}
        data_files[ATTRIBUTES_CONFIG] = {
            TABLE_SPLIT: _write_parquet_shards(_attributes_table(ds.semantics), tmp / ATTRIBUTES_CONFIG, TABLE_SPLIT, 1000)
        }
        readme = _readme(ds.name, data_files, ds.semantics, {s: len(ds.splits[s]) for s in order})
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _load_table(path_or_id: str, config: str, revision: str | None, cache_dir: Path) -> Dataset:
    """A small table config, read whole (it has one row per class or attribute)."""
    stream = load_dataset(path_or_id, config, split=TABLE_SPLIT, streaming=True, revision=revision, cache_dir=str(cache_dir))
    return Dataset.from_list(list(stream), features=stream.features)


def _column(table: Dataset, name: str, source: str) -> list:
    if name not in table.column_names:
        raise ValueError(f"{source}: missing column '{name}' (found: {table.column_names})")
    return table[name]


def _iter_feature_batches(split: IterableDataset, rows: int) -> Iterator[dict[str, np.ndarray]]:
    """numpy batches of a streamed features split, in the form write_split takes."""
    num_regions, feature_dim = region_shape(split.features)
    for table in split.with_format("arrow").iter(batch_size=rows):
        chunks = table[REGION_COLUMN].chunks
        regions = np.concatenate([region_values(c, num_regions, feature_dim).to_numpy(zero_copy_only=False) for c in chunks])
        batch = {REGION_COLUMN: regions.reshape(len(table), num_regions, feature_dim),
                 LABEL_COLUMN: table[LABEL_COLUMN].to_numpy()}
        if GLOBAL_COLUMN in table.column_names:
            pooled = table[GLOBAL_COLUMN].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            batch[GLOBAL_COLUMN] = pooled.reshape(len(table), feature_dim)
        yield batch


def _check_class_names(split_features: Features, class_names: list[str], source: str) -> None:
    label = split_features.get(LABEL_COLUMN)
    names = getattr(label, "names", None)
    if names is not None and list(names) != list(class_names):
        raise ValueError(
            f"{source}: the '{LABEL_COLUMN}' ClassLabel of the features config names {len(names)} classes that differ "
            f"from the {len(class_names)} rows of the classes config"
        )


def convert_hub_layout(path_or_id: str, out_dir: str | os.PathLike, revision: str | None = None) -> tuple[ClassSemantics, dict]:
    """Stream a dataset repo (local folder or Hub id) into Arrow splits under ``out_dir``.

    Parquet is read with ``streaming=True`` so nothing but our own Arrow copy is written; the
    ``is_unseen`` column must agree with the unseen classes derived from test_unseen.
    """
    out_dir = Path(out_dir)
    # datasets keeps locks and metadata in its cache even when streaming: keep them with ours.
    hf_cache = out_dir / ".hf_datasets_cache"
    try:
        return _convert_hub_layout(path_or_id, out_dir, revision, hf_cache)
    finally:
        shutil.rmtree(hf_cache, ignore_errors=True)


def _convert_hub_layout(path_or_id: str, out_dir: Path, revision: str | None, hf_cache: Path) -> tuple[ClassSemantics, dict]:
    source = f"{path_or_id}" + (f"@{revision}" if revision else "")
    classes = _load_table(path_or_id, CLASSES_CONFIG, revision, hf_cache)
    order = np.argsort(np.asarray(_column(classes, "class_id", f"{source} ({CLASSES_CONFIG})")), kind="stable")
    classes = classes.select(order)
    ids = np.asarray(classes["class_id"])
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"{source} ({CLASSES_CONFIG}): class_id must run 0..C-1 without gaps, got {ids[:10].tolist()}")
    class_names = list(_column(classes, "class_name", f"{source} ({CLASSES_CONFIG})"))
    table = _load_table(path_or_id, ATTRIBUTES_CONFIG, revision, hf_cache)
    splits = feature_splits(path_or_id, revision, hf_cache)
    missing = [s for s in REQUIRED_SPLITS if s not in splits]
    if missing:
        raise ValueError(f"{source} ({FEATURES_CONFIG}): missing splits {missing}, found {sorted(splits)}")
    features = splits["train"].features
    num_regions, feature_dim = region_shape(features)
    _check_class_names(features, class_names, source)
    target = region_feature_features(num_regions, feature_dim, class_names, with_global=GLOBAL_COLUMN in features)
    rows = max(1, _ROW_GROUP_BYTES // (num_regions * feature_dim * 2))
    labels = {}
    for name, split in splits.items():
        if not (out_dir / name).is_dir():
            write_split(_iter_feature_batches(split, rows), target, out_dir / name, desc=f"{source} {name}")
        labels[name] = np.asarray(load_split(out_dir / name).data.column(LABEL_COLUMN).to_numpy())
    semantics = build_semantics(
        attributes=np.asarray(_column(classes, "attributes", f"{source} ({CLASSES_CONFIG})"), dtype=np.float32),
        original_attributes=(
            np.asarray(classes["original_attributes"], dtype=np.float32)
            if "original_attributes" in classes.column_names else None
        ),
        class_names=class_names,
        split_labels=labels,
        word_vectors=np.asarray(table["word_vector"], dtype=np.float32) if "word_vector" in table.column_names else None,
        attribute_names=list(_column(table, "attribute_name", f"{source} ({ATTRIBUTES_CONFIG})")),
        source=source,
    )
    flagged = np.flatnonzero(np.asarray(_column(classes, "is_unseen", f"{source} ({CLASSES_CONFIG})"), dtype=bool))
    if not np.array_equal(flagged, semantics.unseen_class_ids):
        raise ValueError(
            f"{source}: 'is_unseen' of the classes config marks classes {flagged.tolist()[:10]} "
            f"but test_unseen holds classes {semantics.unseen_class_ids.tolist()[:10]}"
        )
    return semantics, {}


def feature_splits(path_or_id: str, revision: str | None, cache_dir: Path) -> dict[str, IterableDataset]:
    """The ``features`` config as streamed splits (Parquet is read directly, no Arrow copy)."""
    return dict(load_dataset(path_or_id, FEATURES_CONFIG, streaming=True, revision=revision, cache_dir=str(cache_dir)))
