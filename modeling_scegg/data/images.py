"""Raw image folders -> ResNet-101 region features in the Arrow store, resumably.

Input layout
------------
``image_dir/<class_name>/**/*.{jpg,jpeg,png,bmp,gif,webp,tif,tiff}`` (ImageFolder style; hidden
files and other extensions are ignored). Every class folder must be listed in the class file and
hold at least one image, and every listed class must have a folder.

``class_attributes_file`` is a CSV with a header row::

    class_name,is_unseen,<attribute name 1>,...,<attribute name A>
    black_footed_albatross,0,0.0,12.5,...
    ...

Row order defines the class ids (labels). ``is_unseen`` is 0/1 (or true/false); A is whatever
the header says. Values are the raw attributes (any scale); the model gets each class row
L2-normalised, as in xlsa17's ``att``.

``splits_file`` (optional) is a JSON object mapping each image's path relative to ``image_dir``
(``"<class_name>/<file>"``, forward slashes) to ``"trainval"``, ``"test_seen"`` or
``"test_unseen"``; it must cover every image and agree with ``is_unseen``. Without it, unseen
classes' images form ``test_unseen`` and each seen class's images are split deterministically
(``seed``) into ``trainval`` and ``test_seen`` (``test_seen_fraction`` per class).

``attribute_vectors_file`` (optional) holds the (A, dv) attribute word vectors, rows in the
order of the attribute columns, in any format :func:`~.word_vectors.load_word_vectors` reads
(``.npy`` without pickle, ``.safetensors``, or a restricted-unpickled ``.pkl``).

Output
------
:func:`load_image_folder` returns an :class:`ImageFolderResult`:

* ``splits``: ``{"train", "test_seen", "test_unseen"}`` -> memory-mapped ``datasets.Dataset`` with
  ``region_features`` (R, D) float16, ``label`` (ClassLabel over ``class_names``) and
  ``global_features`` (D,) float32, the mean over regions. "train" is xlsa17's trainval.
* ``class_names`` (C), ``attributes`` (C, A) float32 L2-normalised rows, ``original_attributes``
  (C, A) float32 as in the file, ``attribute_names`` (A), ``seen_class_ids`` / ``unseen_class_ids``
  (int64), ``attribute_vectors`` (A, dv) float32 or None, ``image_files`` (split -> relative
  paths, in row order).

Resumability
------------
Features are computed in chunks of ``chunk_size`` images per split and each finished chunk is
saved atomically as ``.npy`` shards under ``out_dir/_extraction``, next to a manifest that pins
the image lists, the preprocessing and a hash of the backbone weights. A rerun skips finished
chunks; a rerun with different settings refuses to mix them (``resume=False`` starts over). When
every split is written, ``out_dir/image_features.json`` marks the result complete, the shards
are removed, and later calls with the same settings just memory-map the stored splits.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import ResNetModel

from ..atomic import atomic_path, atomic_write_text
from ..errors import UserError
from ..image_processing_scegg import SCEGGImageProcessor, UnusableImage, load_picture
from .backbone import (
    AUTOCAST_DTYPES,
    DEFAULT_CROP_SIZE,
    ImagePreprocessor,
    RegionFeatureExtractor,
    backbone_id,
    build_resnet101,
    image_processor,
    model_fingerprint,
)
from .semantics import ClassTable, attribute_values, l2_normalize_rows
from .store import load_split, region_feature_features, split_batches, write_split
from .word_vectors import load_word_vectors

logger = logging.getLogger(__name__)

SOURCE_SPLITS = ("trainval", "test_seen", "test_unseen")
DATASET_SPLIT_NAMES = {"trainval": "train", "test_seen": "test_seen", "test_unseen": "test_unseen"}
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
WORK_DIR_NAME = "_extraction"
DONE_FILE_NAME = "image_features.json"
MANIFEST_FILE_NAME = "manifest.json"
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


@dataclass
class ImageFolderResult:
    """Everything the ZSL loader needs from an image folder (see the module docstring)."""

    splits: dict[str, Dataset]
    class_names: list[str]
    attributes: np.ndarray
    original_attributes: np.ndarray
    attribute_names: list[str]
    seen_class_ids: np.ndarray
    unseen_class_ids: np.ndarray
    attribute_vectors: np.ndarray | None
    image_files: dict[str, list[str]]
    backbone: str  # the extraction backbone, as backbone_id() names it


def _parse_flag(value: str, where: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{where}: is_unseen must be 0/1 or true/false, got {value!r}")


def read_class_table(path: str | os.PathLike) -> ClassTable:
    """Parse and validate the class CSV (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class attributes file not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"{path} is empty; expected a header 'class_name,is_unseen,<attributes...>'")
    header = [cell.strip() for cell in rows[0]]
    if header[:2] != ["class_name", "is_unseen"] or len(header) < 3:
        raise ValueError(
            f"{path}: the header must start with 'class_name,is_unseen' followed by at least one "
            f"attribute column, got {header[:4]}{'...' if len(header) > 4 else ''}"
        )
    attribute_names = header[2:]
    names, unseen, values = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        where = f"{path}, line {line}"
        if len(row) != len(header):
            raise ValueError(
                f"{where} (class {row[0].strip()!r}): expected {len(attribute_names)} attribute values "
                f"({len(header)} columns), got {len(row) - 2} ({len(row)} columns)"
            )
        name = row[0].strip()
        if not name:
            raise ValueError(f"{where}: empty class_name")
        values.append(attribute_values(row[2:], where, name))
        names.append(name)
        unseen.append(_parse_flag(row[1], where))
    if not names:
        raise ValueError(f"{path} lists no classes")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicated class names {duplicates}")
    is_unseen = np.array(unseen, dtype=bool)
    if is_unseen.all() or not is_unseen.any():
        raise ValueError(
            f"{path}: zero-shot learning needs both seen and unseen classes, got "
            f"{int((~is_unseen).sum())} seen and {int(is_unseen.sum())} unseen"
        )
    # the file's values are the model's attributes (normalised per class on loading) and, as they
    # are, the original attributes
    raw = np.array(values, dtype=np.float32)
    return ClassTable(names, raw, original_attributes=raw, attribute_names=attribute_names, is_unseen=is_unseen)


def list_images(image_dir: str | os.PathLike, class_names: list[str]) -> dict[str, list[str]]:
    """Class name -> sorted image paths relative to ``image_dir``, checked against the class file."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    folders = sorted(p.name for p in image_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise ValueError(f"class folders {unknown} in {image_dir} are not listed in the class attributes file")
    missing = [name for name in class_names if name not in folders]
    if missing:
        raise ValueError(f"classes {missing} of the class attributes file have no folder in {image_dir}")
    images = {}
    for name in class_names:
        files = sorted(
            p.relative_to(image_dir).as_posix()
            for p in (image_dir / name).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise ValueError(f"class folder {image_dir / name} holds no images ({sorted(IMAGE_EXTENSIONS)})")
        images[name] = files
    return images


def _split_seen_class(files: list[str], fraction: float, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """(trainval, test_seen) of one seen class; trainval always keeps at least one image."""
    n_test = min(int(round(fraction * len(files))), len(files) - 1)
    order = rng.permutation(len(files))
    test = sorted(files[i] for i in order[:n_test])
    return sorted(set(files) - set(test)), test


def derive_splits(
    images: dict[str, list[str]], table: ClassTable, test_seen_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Unseen classes -> test_unseen; each seen class split trainval / test_seen, reproducibly."""
    if not 0 <= test_seen_fraction < 1:
        raise ValueError(f"test_seen_fraction must lie in [0, 1), got {test_seen_fraction}")
    rng = np.random.default_rng(seed)
    splits: dict[str, list[str]] = {split: [] for split in SOURCE_SPLITS}
    for name, unseen in zip(table.class_names, table.is_unseen):
        if unseen:
            splits["test_unseen"] += images[name]
        else:
            trainval, test = _split_seen_class(images[name], test_seen_fraction, rng)
            splits["trainval"] += trainval
            splits["test_seen"] += test
    return {split: sorted(files) for split, files in splits.items()}


def read_splits_file(path: str | os.PathLike, images: dict[str, list[str]], table: ClassTable) -> dict[str, list[str]]:
    """Splits from a JSON mapping, checked to cover every image and to respect seen/unseen."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"splits file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        mapping = json.load(handle)
    if not isinstance(mapping, dict):
        raise ValueError(f"{path} must hold a JSON object mapping image path -> split")
    bad = sorted({str(v) for v in mapping.values()} - set(SOURCE_SPLITS))
    if bad:
        raise ValueError(f"{path}: unknown split names {bad}, expected one of {list(SOURCE_SPLITS)}")
    class_of = {file: name for name, files in images.items() for file in files}
    unknown = sorted(set(mapping) - set(class_of))
    uncovered = sorted(set(class_of) - set(mapping))
    if unknown or uncovered:
        raise ValueError(
            f"{path} must name exactly the images found: {len(unknown)} listed but not found "
            f"{unknown[:5]}, {len(uncovered)} found but not listed {uncovered[:5]}"
        )
    unseen = dict(zip(table.class_names, table.is_unseen))
    wrong = sorted(f for f, split in mapping.items() if (split == "test_unseen") != unseen[class_of[f]])
    if wrong:
        raise ValueError(
            f"{path}: {len(wrong)} images contradict is_unseen of the class file (test_unseen must hold "
            f"exactly the unseen classes' images), e.g. {wrong[:5]}"
        )
    return {split: sorted(f for f, s in mapping.items() if s == split) for split in SOURCE_SPLITS}


def read_attribute_vectors(path: str | os.PathLike, num_attributes: int) -> np.ndarray:
    """(A, dv) float32 word vectors, one row per attribute column of the class file."""
    vectors = load_word_vectors(path)
    if vectors.shape[0] != num_attributes:
        raise ValueError(f"{path}: expected shape ({num_attributes}, dv), got {vectors.shape}")
    return vectors


class _ImageFiles(torch.utils.data.Dataset):
    """Decoding and preprocessing, so DataLoader workers can keep a GPU fed.

    It holds the preprocessing only, never the model: workers started by spawn pickle it.
    """

    def __init__(self, image_dir: Path, files: list[str], preprocess: ImagePreprocessor):
        self.image_dir = image_dir
        self.files = files
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        """The picture read as every path reads it (:func:`load_picture`: formats, sizes, EXIF
        orientation, 16-bit scaling), preprocessed; an unusable one stops the extraction, naming
        it (finished chunks are kept, so a rerun resumes)."""
        path = self.image_dir / self.files[index]
        try:
            image = load_picture(path, getattr(getattr(self.preprocess, "processor", None), "decode_size", None))
        except UnusableImage as error:
            raise ValueError(f"cannot read image {path}: {error}; remove or replace it and rerun "
                             f"(the chunks already extracted are kept)") from error
        return self.preprocess([image])[0]


def _extract_chunk(
    extractor: RegionFeatureExtractor,
    images: _ImageFiles,
    batch_size: int,
    num_workers: int,
    bar: tqdm,
) -> tuple[np.ndarray, np.ndarray]:
    """Regions (n, R, D) float16 and global features (n, D) float32 of one chunk of images."""
    loader = torch.utils.data.DataLoader(
        images, batch_size=batch_size, num_workers=num_workers, pin_memory=extractor.device.type == "cuda"
    )
    regions, pooled = [], []
    for pixel_values in loader:
        features = extractor.extract_pixel_values(pixel_values)
        regions.append(features.regions)
        pooled.append(features.global_)
        bar.update(len(pixel_values))
    regions32 = np.concatenate(regions)
    with np.errstate(over="ignore"):  # overflow is detected and reported just below
        regions16 = regions32.astype(np.float16)
    if not np.isfinite(regions16).all():
        raise ValueError(
            f"region features of {images.image_dir / images.files[0]} ... {images.files[-1]} exceed the "
            f"float16 storage range (max |x| = {float(np.abs(regions32).max())}); are the backbone weights "
            f"real ImageNet weights? random weights blow up at full resolution"
        )
    return regions16, np.concatenate(pooled).astype(np.float32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Write next to the target and rename, so a crash never leaves a truncated shard."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1))


def _shard_paths(work_dir: Path, split: str, chunk: int) -> tuple[Path, Path]:
    """(regions, global) shard files; the regions file is written last and marks the chunk done."""
    stem = f"{split}-{chunk:05d}"
    return work_dir / f"{stem}.regions.npy", work_dir / f"{stem}.global.npy"


def _chunk_done(work_dir: Path, split: str, chunk: int) -> bool:
    regions, pooled = _shard_paths(work_dir, split, chunk)
    return regions.is_file() and pooled.is_file()


def _describe_difference(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys)


def _prepare_work_dir(work_dir: Path, manifest: dict, resume: bool) -> None:
    """Keep finished shards only when they were made with exactly these images and settings."""
    manifest_path = work_dir / MANIFEST_FILE_NAME
    if work_dir.exists() and (not resume or not manifest_path.is_file()):
        shutil.rmtree(work_dir)  # shards without a manifest cannot be trusted
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if old != manifest:
            raise ValueError(
                f"the partial extraction in {work_dir} was made with other settings (differs in: "
                f"{_describe_difference(old, manifest)}); pass resume=False to discard it or use another out_dir"
            )
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    _write_json(manifest_path, manifest)


def _extract_all(
    extractor: RegionFeatureExtractor,
    image_dir: Path,
    splits: dict[str, list[str]],
    work_dir: Path,
    chunk_size: int,
    batch_size: int,
    num_workers: int,
) -> None:
    """Compute every unfinished chunk of every split, saving each as soon as it is done."""
    todo = [
        (split, chunk)
        for split in SOURCE_SPLITS
        for chunk in range(_num_chunks(len(splits[split]), chunk_size))
        if not _chunk_done(work_dir, split, chunk)
    ]
    total = sum(len(_chunk_files(splits[split], chunk, chunk_size)) for split, chunk in todo)
    with tqdm(total=total, desc="ResNet region features", unit="img") as bar:
        for split, chunk in todo:
            files = _chunk_files(splits[split], chunk, chunk_size)
            regions, pooled = _extract_chunk(
                extractor, _ImageFiles(image_dir, files, extractor.preprocess), batch_size, num_workers, bar
            )
            regions_path, pooled_path = _shard_paths(work_dir, split, chunk)
            _save_npy(pooled_path, pooled)
            _save_npy(regions_path, regions)


def _num_chunks(num_files: int, chunk_size: int) -> int:
    return -(-num_files // chunk_size)


def _chunk_files(files: list[str], chunk: int, chunk_size: int) -> list[str]:
    return files[chunk * chunk_size : (chunk + 1) * chunk_size]


def _shard_batches(
    work_dir: Path, split: str, files: list[str], labels: np.ndarray, chunk_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """One split's region shards (memory-mapped) and global features, streamed to the store writer."""
    chunks = range(_num_chunks(len(files), chunk_size))
    regions = (np.load(_shard_paths(work_dir, split, chunk)[0], mmap_mode="r") for chunk in chunks)
    pooled = np.concatenate([np.load(_shard_paths(work_dir, split, chunk)[1]) for chunk in chunks])
    return split_batches(regions, np.arange(len(files)), labels, pooled)


def _feature_shape(work_dir: Path, splits: dict[str, list[str]]) -> tuple[int, int]:
    """(R, D) as the backbone produced them: never assumed, read from the first shard."""
    split = next(s for s in SOURCE_SPLITS if splits[s])
    regions_path, _ = _shard_paths(work_dir, split, 0)
    shape = np.load(regions_path, mmap_mode="r").shape
    return int(shape[1]), int(shape[2])


def _labels(files: list[str], class_names: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[file.split("/", 1)[0]] for file in files], dtype=np.int64)


def _build_backbone(weights: str | os.PathLike | ResNetModel | None) -> ResNetModel:
    if isinstance(weights, ResNetModel):
        return weights.eval()
    return build_resnet101(weights)


def _image_splits(image_dir: Path, table: ClassTable, splits_file: str | os.PathLike | None, test_seen_fraction: float,
                  seed: int) -> dict[str, list[str]]:
    """The images of each source split, from the user's splits file or derived; none may be empty."""
    images = list_images(image_dir, table.class_names)
    splits = (
        read_splits_file(splits_file, images, table)
        if splits_file is not None
        else derive_splits(images, table, test_seen_fraction, seed)
    )
    empty = [split for split in SOURCE_SPLITS if not splits[split]]
    if empty:
        raise ValueError(f"splits {empty} of {image_dir} hold no images; every split needs at least one")
    return splits


def load_image_folder(
    image_dir: str | os.PathLike,
    class_attributes_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    splits_file: str | os.PathLike | None = None,
    attribute_vectors_file: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | ResNetModel | None = None,
    batch_size: int = 32,
    crop_size: int = DEFAULT_CROP_SIZE,
    resize_size: int | None = None,
    device: str | torch.device | None = None,
    autocast: str | None = None,
    num_workers: int = 0,
    chunk_size: int = 256,
    test_seen_fraction: float = 0.2,
    seed: int = 0,
    resume: bool = True,
) -> ImageFolderResult:
    """Extract (or reuse) region features of an image folder; see the module docstring.

    ``backbone_weights`` (required): a torchvision ResNet-101 file, a transformers ResNet folder /
    Hub id, a built ``ResNetModel``, or ``"random"`` (tests and benchmarks only). ``autocast`` ("fp16" / "bf16") speeds up
    GPU extraction. ``num_workers`` DataLoader processes decode images in parallel.
    """
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    table = read_class_table(class_attributes_file)
    splits = _image_splits(image_dir, table, splits_file, test_seen_fraction, seed)
    attributes = l2_normalize_rows(table.attributes, str(class_attributes_file), "attributes", table.class_names)
    vectors = (None if attribute_vectors_file is None
               else read_attribute_vectors(attribute_vectors_file, len(table.attribute_names)))
    model = _build_backbone(backbone_weights)
    # what the stored features depend on: a folder extracted with other settings is not reused
    manifest = {"class_names": table.class_names, "splits": splits, "crop_size": crop_size,
                "resize_size": resize_size or crop_size, "autocast": autocast, "backbone_sha256": model_fingerprint(model)}
    datasets_ = _stored_splits(out_dir, manifest, resume)
    if datasets_ is None:
        extractor = RegionFeatureExtractor(model, crop_size=crop_size, resize_size=resize_size, device=device,
                                           autocast=autocast)
        datasets_ = _extract_and_store(
            extractor, image_dir, splits, table.class_names, out_dir, manifest, resume, chunk_size, batch_size, num_workers
        )
    return ImageFolderResult(
        splits=datasets_,
        class_names=table.class_names,
        attributes=attributes,
        original_attributes=table.original_attributes,
        attribute_names=table.attribute_names,
        seen_class_ids=np.flatnonzero(~table.is_unseen).astype(np.int64),
        unseen_class_ids=np.flatnonzero(table.is_unseen).astype(np.int64),
        attribute_vectors=vectors,
        image_files={DATASET_SPLIT_NAMES[s]: files for s, files in splits.items()},
        backbone=backbone_id(model),
    )


# The settings of load_image_folder a run may set (``--image_options key=value ...`` on the command
# line, ``image_options`` of load_zsl_dataset): name -> (type, what it sets).
IMAGE_OPTIONS: dict[str, tuple[type, str]] = {
    "crop_size": (int, f"the crop the backbone sees (default {DEFAULT_CROP_SIZE}: 14 x 14 regions; 224: 7 x 7)"),
    "resize_size": (int, "short side before cropping (default: the crop size)"),
    "splits_file": (str, "JSON file mapping each image to trainval / test_seen / test_unseen"),
    "test_seen_fraction": (float, "without a splits file: the share of each seen class held out as test_seen"),
    "seed": (int, "without a splits file: the seed of that split"),
    "attribute_vectors_file": (str, "the (A, dv) attribute word vectors (.npy, .safetensors, .pkl)"),
    "batch_size": (int, "pictures per forward pass"),
    "chunk_size": (int, "pictures per resumable shard"),
    "num_workers": (int, "DataLoader processes decoding pictures"),
    "device": (str, "where the backbone runs (default: cuda when available)"),
    "autocast": (str, "fp16 or bf16 on a GPU (default: float32)"),
}
_MINIMUM = {"crop_size": 1, "resize_size": 1, "batch_size": 1, "chunk_size": 1, "num_workers": 0}
_KIND_WORDS = {int: "a whole number", float: "a number", str: "a text"}
_ACCEPTED = {int: (int,), float: (int, float), str: (str, os.PathLike, torch.device)}  # what Python callers may pass
_NONE_MEANS_DEFAULT = ("resize_size", "splits_file", "attribute_vectors_file", "device", "autocast")


def _options_remedy() -> str:
    return "image options are " + "; ".join(f"{name}: {help_}" for name, (_, help_) in IMAGE_OPTIONS.items())


def parse_image_options(items: list[str]) -> dict[str, object]:
    """``key=value`` strings (``--image_options crop_size=224 ...``) as checked options for
    :func:`load_image_folder`; a mistake names the option and what it takes."""
    options: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in IMAGE_OPTIONS:
            raise UserError(f"--image_options: {item!r} is not key=value with one of the image options "
                            f"({', '.join(IMAGE_OPTIONS)})", _options_remedy())
        kind = IMAGE_OPTIONS[key][0]
        try:
            options[key] = kind(text)
        except ValueError:
            raise UserError(f"--image_options: {key} takes {_KIND_WORDS[kind]}, got {text!r}", _options_remedy()) from None
    return check_image_options(options)


def check_image_options(options: dict[str, object]) -> dict[str, object]:
    """The options, after refusing unknown names and values load_image_folder cannot use."""
    for name, value in options.items():
        if name not in IMAGE_OPTIONS:
            raise UserError(f"unknown image option {name!r}", _options_remedy())
        if value is None and name in _NONE_MEANS_DEFAULT:
            continue
        kind = IMAGE_OPTIONS[name][0]
        if isinstance(value, bool) or not isinstance(value, _ACCEPTED[kind]):
            raise UserError(f"image option {name} takes {_KIND_WORDS[kind]}, got {value!r}", _options_remedy())
        if name in _MINIMUM and value < _MINIMUM[name]:
            raise UserError(f"image option {name} must be at least {_MINIMUM[name]}, got {value}", _options_remedy())
    crop = options.get("crop_size", DEFAULT_CROP_SIZE)
    if (options.get("resize_size") or crop) < crop:
        raise UserError(f"image option resize_size={options['resize_size']} is smaller than the crop ({crop})",
                        "resize the short side to at least the crop size, or leave resize_size out")
    if not 0 <= options.get("test_seen_fraction", 0) < 1:
        raise UserError(f"image option test_seen_fraction must lie in [0, 1), got {options['test_seen_fraction']}",
                        "pass the share of each seen class's images to hold out, e.g. test_seen_fraction=0.2")
    if options.get("autocast") not in (None, *AUTOCAST_DTYPES):
        raise UserError(f"image option autocast must be one of {sorted(AUTOCAST_DTYPES)}, got {options['autocast']!r}",
                        "leave it out for float32")
    missing = [options[name] for name in ("splits_file", "attribute_vectors_file")
               if options.get(name) is not None and not Path(options[name]).is_file()]
    if missing:
        raise UserError(f"image option files not found: {missing}", "check the paths")
    return options


def image_options_processor(options: dict[str, object]) -> SCEGGImageProcessor:
    """The image processor of features extracted with `options` (what a model trained on them saves)."""
    return image_processor(options.get("crop_size", DEFAULT_CROP_SIZE), options.get("resize_size"))


def _stored_splits(out_dir: Path, manifest: dict, resume: bool) -> dict[str, Dataset] | None:
    """The finished splits of an earlier identical run, or None when they must be (re)computed."""
    done_path = out_dir / DONE_FILE_NAME
    if not resume or not done_path.is_file():
        return None
    old = json.loads(done_path.read_text(encoding="utf-8"))
    if old != manifest:
        raise ValueError(
            f"{out_dir} already holds image features made with other settings (differs in: "
            f"{_describe_difference(old, manifest)}); pass resume=False to overwrite them or use another out_dir"
        )
    return {DATASET_SPLIT_NAMES[s]: load_split(out_dir / DATASET_SPLIT_NAMES[s]) for s in SOURCE_SPLITS}


def _extract_and_store(
    extractor: RegionFeatureExtractor,
    image_dir: Path,
    splits: dict[str, list[str]],
    class_names: list[str],
    out_dir: Path,
    manifest: dict,
    resume: bool,
    chunk_size: int,
    batch_size: int,
    num_workers: int,
) -> dict[str, Dataset]:
    """Shards first (resumable), then one Arrow split each, then the completion marker."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DONE_FILE_NAME).unlink(missing_ok=True)
    work_dir = out_dir / WORK_DIR_NAME
    work_manifest = {**manifest, "chunk_size": chunk_size}
    _prepare_work_dir(work_dir, work_manifest, resume)
    _extract_all(extractor, image_dir, splits, work_dir, chunk_size, batch_size, num_workers)
    num_regions, feature_dim = _feature_shape(work_dir, splits)
    features = region_feature_features(num_regions, feature_dim, class_names, with_global=True)
    result = {}
    for split in SOURCE_SPLITS:
        name = DATASET_SPLIT_NAMES[split]
        files = splits[split]
        batches = _shard_batches(work_dir, split, files, _labels(files, class_names), chunk_size)
        result[name] = write_split(batches, features, out_dir / name, num_rows=len(files), desc=f"writing {name}")
    _write_json(out_dir / DONE_FILE_NAME, manifest)
    shutil.rmtree(work_dir)
    return result
