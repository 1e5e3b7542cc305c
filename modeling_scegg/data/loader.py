"""``load_zsl_dataset``: one entry point for every source of zero-shot data.

Each source is converted once into ``<cache_dir>/<name>-<hash>`` (see :mod:`.converted`), where
the hash covers what determines the result: the source files' paths, sizes and modification
times, the synthetic config, the Hub revision. Later calls only memory-map that folder. A file
lock makes concurrent callers (e.g. the ranks of a multi-process run) wait for one conversion
instead of racing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import datasets.config
import numpy as np
from datasets import DatasetDict
from filelock import FileLock
from huggingface_hub import HfApi
from transformers import ResNetModel

from .attribute_text import ensure_word_vectors
from .backbone import HUB_ID, backbone_name, model_fingerprint
from .converted import FORMAT_VERSION, is_converted, open_converted, save_converted
from .hub_layout import convert_hub_layout
from .images import check_image_options, load_image_folder
from .semantics import ClassSemantics, ZSLDataset, build_semantics, clip_negative
from .synthetic import SyntheticConfig, write_synthetic_splits
from .xlsa17 import StandardFiles, convert_standard, find_standard_files, read_feature_backbone

logger = logging.getLogger(__name__)

# Benchmarks of the xlsa17 layout; any other name with files in that layout under data_dir loads too.
STANDARD_DATASETS = ("CUB", "SUN", "AWA2", "AWA1", "APY", "FLO")
_STANDARD_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")

__all__ = ["ClassSemantics", "ZSLDataset", "default_cache_dir", "load_zsl_dataset"]


def default_cache_dir() -> Path:
    """``scegg/`` inside the Hugging Face datasets cache (``HF_DATASETS_CACHE``, by default
    ``$HF_HOME/datasets``): converted features live where every other dataset of the user does,
    are found by the same settings and cleaned with the same tools. A Hub dataset is streamed
    into it (``streaming=True``), so its Parquet is never stored beside the Arrow copy."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "scegg"


def _digest(parts: object) -> str:
    payload = json.dumps({"format": FORMAT_VERSION, "parts": parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def file_fingerprint(path: Path | None) -> list | None:
    """Identity of a source file without reading it (a 19 GB HDF5 cannot be hashed each load)."""
    if path is None:
        return None
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def folder_fingerprint(folder: Path) -> list:
    """Identity of every non-hidden file of a folder (a local dataset repo, a backbone checkpoint)."""
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return [file_fingerprint(p) for p in files]


def _safe_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "dataset"


def _materialise(
    out_dir: Path, name: str, convert: Callable[[Path], tuple[ClassSemantics, dict]], source: dict
) -> ZSLDataset:
    """Convert into ``out_dir`` unless a finished conversion is there, then memory-map it."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        if not is_converted(out_dir):
            logger.info("converting %s into %s (once; later loads memory-map it)", name, out_dir)
            out_dir.mkdir(exist_ok=True)
            semantics, subsets = convert(out_dir)
            save_converted(out_dir, name, semantics, subsets, source)
    return open_converted(out_dir)


def _load_synthetic(config: SyntheticConfig, cache_dir: Path) -> ZSLDataset:
    out_dir = cache_dir / f"synthetic-{config.fingerprint()}"
    return _materialise(out_dir, "synthetic", lambda out: write_synthetic_splits(config, out),
                        {"synthetic_config": asdict(config)})


def _load_standard(name: str, data_dir: str | os.PathLike | None, cache_dir: Path) -> ZSLDataset:
    if data_dir is None:
        raise ValueError(f"load_zsl_dataset('{name}') needs data_dir: the folder holding xlsa17/, w2v/ and {name}/")
    files: StandardFiles = find_standard_files(name, data_dir)
    parts = {key: file_fingerprint(value) for key, value in vars(files).items() if key != "name"}
    out_dir = cache_dir / f"{name}-{_digest(parts)}"
    dataset = _materialise(out_dir, name, lambda out: convert_standard(files, out), {"standard": parts})
    # the HDF5 says which backbone computed it, so the trained model knows it (attach-backbone checks it)
    dataset.feature_backbone, dataset.feature_backbone_name = read_feature_backbone(files.region_hdf5)
    return dataset


def _hub_revision_sha(repo_id: str, revision: str | None) -> str | None:
    """The commit a Hub revision points to, so a moved branch gets a new cache; None when offline."""
    try:
        return HfApi().dataset_info(repo_id, revision=revision).sha
    except Exception as error:  # offline or unknown: key on the revision name alone
        logger.info("could not resolve %s@%s on the Hub (%s); caching by revision name", repo_id, revision, error)
        return None


def _load_hub_layout(path_or_id: str, cache_dir: Path, revision: str | None) -> ZSLDataset:
    local = Path(path_or_id)
    if local.is_dir():
        parts = {"folder": folder_fingerprint(local)}
        name, out_name = local.resolve().name, f"hub-{_safe_name(local.resolve().name)}"
    else:
        parts = {"repo": path_or_id, "revision": revision, "sha": _hub_revision_sha(path_or_id, revision)}
        name, out_name = path_or_id, f"hub-{_safe_name(path_or_id)}"
    out_dir = cache_dir / f"{out_name}-{_digest(parts)}"
    return _materialise(out_dir, name, lambda out: convert_hub_layout(path_or_id, out, revision), {"hub_layout": parts})


def _backbone_identity(backbone) -> object:
    """What identifies the backbone weights in the cache key: the file, the Hub id, or the weights' hash."""
    if backbone is None or isinstance(backbone, str) and not Path(backbone).exists():
        return backbone
    if isinstance(backbone, (str, os.PathLike)):
        path = Path(backbone)
        return folder_fingerprint(path) if path.is_dir() else file_fingerprint(path)
    return model_fingerprint(backbone)


def _load_images(
    image_dir: str,
    cache_dir: Path,
    class_attributes_file: str | os.PathLike,
    image_backbone,
    image_options: dict,
) -> ZSLDataset:
    """Delegate to :func:`.images.load_image_folder`, which caches and resumes on its own."""
    options = check_image_options(dict(image_options))
    parts = {
        "image_dir": str(Path(image_dir).resolve()),
        "class_attributes_file": file_fingerprint(Path(class_attributes_file)),
        "splits_file": file_fingerprint(options.get("splits_file") and Path(options["splits_file"])),
        "backbone": _backbone_identity(image_backbone),
        "options": {k: v for k, v in options.items()
                    if k in ("crop_size", "resize_size", "test_seen_fraction", "seed", "autocast")},
    }
    out_dir = cache_dir / f"images-{_safe_name(Path(image_dir).resolve().name)}-{_digest(parts)}"
    result = load_image_folder(image_dir, class_attributes_file, out_dir, backbone_weights=image_backbone, **options)
    semantics = build_semantics(
        attributes=result.attributes,
        original_attributes=result.original_attributes,
        class_names=result.class_names,
        split_labels={name: np.asarray(split.data.column("label").to_numpy()) for name, split in result.splits.items()},
        word_vectors=result.attribute_vectors,
        attribute_names=result.attribute_names,
        source=str(image_dir),
    )
    if not np.array_equal(semantics.unseen_class_ids, result.unseen_class_ids):
        raise ValueError(f"{class_attributes_file}: is_unseen disagrees with the classes found in test_unseen")
    return ZSLDataset(name=Path(image_dir).name, splits=DatasetDict(result.splits), semantics=semantics,
                      feature_backbone=result.backbone,
                      feature_backbone_name=backbone_name(image_backbone))


def _standard_name(name: str, data_dir: str | os.PathLike | None) -> str | None:
    """The benchmark name to look up in the standard layout, or None for other sources: a known
    benchmark (CUB, SUN, ...; in capitals, as xlsa17 names its folders) unless a folder of that
    name sits in the working directory, or, given `data_dir`, any plain name."""
    if name.upper() in STANDARD_DATASETS and (data_dir is not None or not Path(name).exists()):
        return name.upper()
    if data_dir is not None and _STANDARD_NAME.match(name) and not Path(name).is_dir():
        return name
    return None


def _load_files(name_or_path: str, data_dir: str | os.PathLike | None, cache_dir: Path, revision: str | None) -> ZSLDataset:
    """A dataset in the standard layout under `data_dir`, else a folder or Hub id in the hub layout."""
    standard = _standard_name(name_or_path, data_dir)
    if standard:
        return _load_standard(standard, data_dir, cache_dir)
    if Path(name_or_path).is_dir() or HUB_ID.match(name_or_path):
        return _load_hub_layout(name_or_path, cache_dir, revision)
    raise ValueError(
        f"unknown dataset '{name_or_path}': expected 'synthetic', a dataset name whose files are in the standard "
        f"layout under data_dir (e.g. {list(STANDARD_DATASETS)}), an image folder (with class_attributes_file), "
        "or a dataset folder / Hub id ('owner/name') in the hub layout"
    )


def load_zsl_dataset(
    name_or_path: str = "synthetic",
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    clip_negative_attributes: bool = False,
    synthetic_config: SyntheticConfig | None = None,
    revision: str | None = None,
    image_backbone: str | os.PathLike | ResNetModel | None = None,
    class_attributes_file: str | os.PathLike | None = None,
    image_options: dict | None = None,
    attribute_encoder: str | None = None,
) -> ZSLDataset:
    """Load a zero-shot benchmark as memory-mapped Arrow splits plus its class semantics.

    ``name_or_path``:

    * ``"synthetic"`` (default): the built-in generator (``synthetic_config`` sets its sizes);
    * ``"CUB"``, ``"SUN"``, ``"AWA2"``, ``"APY"``, ... or any other name: the xlsa17 files +
      region HDF5 + word vectors of that name under ``data_dir`` (layout in :mod:`.xlsa17`; every
      size is read from the files);
    * an image folder, when ``class_attributes_file`` is given: ResNet-101 region features are
      extracted with ``image_backbone`` (a torchvision ResNet-101 file, a transformers ResNet
      folder / Hub id, a built ``ResNetModel``, or ``"random"`` for tests; required; see
      :mod:`.images`); ``image_options`` go to :func:`.images.load_image_folder`;
    * a local folder or Hub dataset id in the layout of :mod:`.hub_layout` (``revision`` pins
      a Hub commit).

    ``clip_negative_attributes`` clips the few negative AWA2 ``att`` entries to 0 (and
    re-normalises); it is applied at load time, so it never triggers a new conversion.

    ``attribute_encoder`` (a sentence encoder's Hub id or folder, e.g.
    :data:`.attribute_text.DEFAULT_ATTRIBUTE_ENCODER`) guarantees attribute word vectors, as
    training needs them: a source without them gets its attribute names embedded (see
    :mod:`.attribute_text`), and one without names either is an error. Without it a missing
    ``semantics.word_vectors`` stays None (evaluation uses the model's own).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if synthetic_config is not None and name_or_path != "synthetic":
        raise ValueError(f"synthetic_config is only used with name_or_path='synthetic', got '{name_or_path}'")
    if class_attributes_file is None and (image_backbone is not None or image_options):
        raise ValueError("image_backbone / image_options need class_attributes_file (the image-folder source)")
    if name_or_path == "synthetic":
        dataset = _load_synthetic(synthetic_config or SyntheticConfig(), cache_dir)
    elif class_attributes_file is not None:
        dataset = _load_images(name_or_path, cache_dir, class_attributes_file, image_backbone, image_options or {})
    else:
        dataset = _load_files(name_or_path, data_dir, cache_dir, revision)
    if clip_negative_attributes:
        dataset.semantics = clip_negative(dataset.semantics)
    if attribute_encoder is not None:
        dataset = ensure_word_vectors(dataset, attribute_encoder)
    return dataset
