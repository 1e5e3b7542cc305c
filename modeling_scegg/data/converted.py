"""The on-disk format of a converted dataset: one folder of Arrow splits plus its class semantics.

Every source is converted once into such a folder (``<cache_dir>/<name>-<hash>``); afterwards
it is only memory-mapped. ``dataset.json`` is written last and atomically, so a folder without
it is an interrupted conversion (its finished splits are reused, the rest is redone).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from safetensors.numpy import load_file, save_file

from ..atomic import atomic_path, atomic_write_text
from .semantics import REQUIRED_SPLITS, VALIDATION_SPLITS, ClassSemantics, ZSLDataset
from .store import load_split

DATASET_JSON = "dataset.json"
SUBSETS_FILE = "subsets.safetensors"
FORMAT_VERSION = 1


def is_converted(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / DATASET_JSON).is_file()


def save_converted(
    out_dir: str | os.PathLike,
    name: str,
    semantics: ClassSemantics,
    subsets: dict[str, np.ndarray],
    source: dict,
) -> None:
    """Finish a conversion: semantics, the train_sub/val positions inside train, then the marker.

    ``subsets`` holds row positions into the train split for validation splits that are not
    stored as folders of their own (they would duplicate trainval's features on disk).
    """
    out_dir = Path(out_dir)
    missing = [s for s in REQUIRED_SPLITS if not (out_dir / s).is_dir()]
    if missing:
        raise ValueError(f"{out_dir}: cannot finish the conversion, splits {missing} were not written")
    semantics.save(out_dir)
    if subsets:
        with atomic_path(out_dir / SUBSETS_FILE) as tmp:
            save_file({k: np.ascontiguousarray(v, dtype=np.int64) for k, v in subsets.items()}, str(tmp))
    description = {"name": name, "format_version": FORMAT_VERSION, "source": source}
    atomic_write_text(out_dir / DATASET_JSON, json.dumps(description, indent=1))


def open_converted(out_dir: str | os.PathLike) -> ZSLDataset:
    """Memory-map a converted folder (nothing is read but the small semantics files)."""
    out_dir = Path(out_dir)
    if not is_converted(out_dir):
        raise FileNotFoundError(f"{out_dir} is not a finished conversion (no {DATASET_JSON})")
    info = json.loads((out_dir / DATASET_JSON).read_text(encoding="utf-8"))
    splits = {s: load_split(out_dir / s) for s in REQUIRED_SPLITS + VALIDATION_SPLITS if (out_dir / s).is_dir()}
    if (out_dir / SUBSETS_FILE).is_file():
        for split, positions in load_file(str(out_dir / SUBSETS_FILE)).items():
            # In-memory index mapping: nothing is written next to the shared train file.
            splits[split] = splits["train"].select(positions, keep_in_memory=True)
    return ZSLDataset(name=info["name"], splits=DatasetDict(splits), semantics=ClassSemantics.load(out_dir))
