"""The public CUB / SUN / AWA2 pictures -> ``DATA_DIR/<DS>/feature_map_ResNet_101_<DS>.hdf5``.

Every benchmark command (``--dataset CUB --data_dir DATA_DIR``) trains on that region-feature
file. :func:`extract_region_features` writes it from the pictures listed in xlsa17's
``res101.mat``, in that order, with the fields the common ZSL preprocessing writes and the
authors' code reads (:mod:`.xlsa17` reads the same):

* ``feature_map`` (N, 2048, H, W) float32: the last ResNet-101 conv map (14 x 14 at 448 px,
  7 x 7 at 224 px), image i is row i of ``res101.mat``;
* ``labels`` (N,), ``trainval_loc`` / ``test_seen_loc`` / ``test_unseen_loc``: 0-based;
* ``att`` / ``original_att`` (C, A) from ``att_splits.mat``; ``w2v_att`` (A, 300) when
  ``DATA_DIR/w2v/<DS>_attribute.*`` is there;
* attributes ``feature_backbone`` (``"sha256:..."``, what ``attach-backbone`` compares),
  ``feature_backbone_name`` (the Hub id or file name given), ``crop_size``, ``resize_size``.

Pictures are found as the authors' extraction script finds them: ``res101.mat`` lists absolute
paths of the machines xlsa17 was made on, and a fixed number of leading path components is
dropped (:data:`DROPPED_COMPONENTS`), leaving the paths inside the public archives
(:data:`IMAGE_LAYOUTS`). A folder one level deeper or higher is found too: the number of
components to drop is probed on the first listed picture.

Resumable and RAM-flat: chunks of ``chunk_size`` pictures are written, one batch at a time, as
``.npy`` shards under ``DATA_DIR/<DS>/_extraction-<DS>/`` (each renamed into place when whole,
next to a manifest pinning the picture list, the backbone and the preprocessing); a rerun skips
finished chunks. The HDF5 is then filled shard by shard under a temporary name and renamed at
the end, so no reader ever sees a partial file; the shards go last. The disk must hold the
shards and the file at once for that moment (CUB at 448 px: 2 x 18.5 GB).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import ResNetConfig, ResNetModel

from ..atomic import atomic_path
from ..errors import UserError
from ..optional import import_optional
from .backbone import (
    DEFAULT_CROP_SIZE,
    RegionFeatureExtractor,
    backbone_id,
    backbone_name,
    build_resnet101,
    default_device,
    describe_backbone,
    resnet101_config,
)
from .images import _ImageFiles, _prepare_work_dir
from .semantics import ClassTable
from .word_vectors import load_word_vectors
from .xlsa17 import MAIN_LOC_FIELDS, candidate_files, check_locs, read_att_splits, read_res101

logger = logging.getLogger(__name__)

# Leading components of res101.mat's image_files (counted without empty ones) that name the
# authors' machines, as their preprocessing.py drops them (its split indices 6, 7, 5 count the
# empty component before the leading "/"; AWA2's paths hold a "//").
DROPPED_COMPONENTS = {"CUB": 5, "SUN": 6, "AWA2": 4}
IMAGE_LAYOUTS = {
    "CUB": "CUB_200_2011/images/<class>/<file>.jpg (CUB_200_2011.tgz unpacked)",
    "SUN": "images/<letter>/<scene>/<file>.jpg (SUNAttributeDB_Images.tar.gz unpacked)",
    "AWA2": "Animals_with_Attributes2/JPEGImages/<class>/<file>.jpg (AwA2-data.zip unpacked)",
}
MISSING_PREVIEW = 5
_WRITE_BLOCK_BYTES = 64 * 2**20  # copied from the shards to the HDF5 in blocks of this size


def feature_file(data_dir: str | os.PathLike, dataset: str) -> Path:
    """Where training looks first for a benchmark's region features (:func:`.xlsa17.candidate_files`)."""
    return candidate_files(data_dir, dataset)["region_hdf5"][0]


def work_folder(data_dir: str | os.PathLike, dataset: str) -> Path:
    return Path(data_dir) / dataset / f"_extraction-{dataset}"


@dataclass
class BenchmarkFiles:
    """The xlsa17 files of one benchmark, and its pictures resolved under the user's folder."""

    dataset: str
    res101: Path
    att_splits: Path
    word_vectors: Path | None
    image_root: Path
    images: list[str]  # paths relative to image_root, in res101.mat order
    labels: np.ndarray


def _xlsa17_file(data_dir: Path, dataset: str, key: str) -> Path:
    """The benchmark's ``res101`` or ``att_splits`` file, where :func:`.xlsa17.candidate_files` looks."""
    candidates = candidate_files(data_dir, dataset)[key]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UserError(f"{dataset}: no {key}.mat under {data_dir} (looked for {', '.join(map(str, candidates))})",
                        "unpack xlsa17.zip (the proposed splits of Xian et al.) into DATA_DIR/xlsa17/")
    return found


def _components(listed: str) -> list[str]:
    return [part for part in listed.replace("\\", "/").split("/") if part]


def _dropped_components(listed: list[str], image_root: Path, dataset: str) -> int:
    """How many leading components to drop: the authors' number for a known benchmark, unless
    the first picture sits elsewhere under ``image_root`` (the user pointed one level off)."""
    first = _components(listed[0])
    default = DROPPED_COMPONENTS.get(dataset)
    for drop in ([default] if default is not None else []) + list(range(len(first))):
        if (image_root / Path(*first[drop:])).is_file():
            return drop
    if default is None:
        raise UserError(f"{dataset}: the first picture of res101.mat, {listed[0]}, is not under {image_root} "
                        "with any of its leading folders removed",
                        "pass the folder that holds the picture's trailing folders (e.g. <class>/<file>.jpg)")
    return default


def resolve_images(listed: list[str], image_root: Path, dataset: str, source: Path) -> list[str]:
    """res101.mat's absolute paths as paths under ``image_root``; every one must be a file."""
    if not image_root.is_dir():
        raise UserError(f"image folder not found: {image_root}", _layout_hint(dataset))
    drop = _dropped_components(listed, image_root, dataset)
    relative = [Path(*_components(name)[drop:]).as_posix() for name in listed]
    missing = [name for name in relative if not (image_root / name).is_file()]
    if missing:
        preview = ", ".join(str(image_root / name) for name in missing[:MISSING_PREVIEW])
        raise UserError(f"{len(missing)} of the {len(listed)} pictures listed in {source} are missing: {preview}"
                        + (", ..." if len(missing) > MISSING_PREVIEW else ""), _layout_hint(dataset))
    return relative


def _layout_hint(dataset: str) -> str:
    layout = IMAGE_LAYOUTS.get(dataset, "the pictures under the folder names res101.mat lists")
    return f"the image folder must hold {layout}; a benchmark's feature file needs every listed picture"


def find_benchmark_files(dataset: str, image_dir: str | os.PathLike, data_dir: str | os.PathLike) -> BenchmarkFiles:
    """Read the picture list and labels, and check that every listed picture is there."""
    data_dir = Path(data_dir)
    res101_path = _xlsa17_file(data_dir, dataset, "res101")
    att_splits = _xlsa17_file(data_dir, dataset, "att_splits")
    res101 = read_res101(res101_path)
    if res101.image_files is None:
        raise UserError(f"{res101_path} has no field 'image_files'", "use the res101.mat of xlsa17.zip")
    if len(res101.image_files) != len(res101.labels):
        raise UserError(f"{res101_path}: {len(res101.image_files)} image_files but {len(res101.labels)} labels",
                        "use an unmodified res101.mat of xlsa17.zip")
    images = resolve_images(res101.image_files, Path(image_dir), dataset, res101_path)
    vectors = candidate_files(data_dir, dataset)["word_vectors"]
    return BenchmarkFiles(dataset, res101_path, att_splits, next((p for p in vectors if p.is_file()), None),
                          Path(image_dir), images, res101.labels)


def _shard_path(work_dir: Path, chunk: int) -> Path:
    return work_dir / f"chunk-{chunk:05d}.npy"


def _chunks(num_images: int, chunk_size: int) -> list[range]:
    return [range(begin, min(begin + chunk_size, num_images)) for begin in range(0, num_images, chunk_size)]


def _batches(images: _ImageFiles, batch_size: int, num_workers: int, pin_memory: bool) -> Iterator[torch.Tensor]:
    """Decoded, preprocessed batches; an unreadable picture stops the run with its path."""
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (ValueError, OSError) as error:
            cause = str(error).strip().splitlines()[-1] if num_workers else str(error)
            raise UserError(cause, "replace the picture with an intact copy from the benchmark's archive; a "
                                   "feature file must cover every listed picture, so none is skipped") from error
        yield batch


def _extract_chunk(extractor: RegionFeatureExtractor, images: _ImageFiles, shard: Path, batch_size: int,
                   num_workers: int, bar: tqdm) -> None:
    """One chunk into one .npy shard, batch by batch (a memory map, never the whole chunk in RAM)."""
    with atomic_path(shard) as tmp:
        array, done = None, 0
        for pixel_values in _batches(images, batch_size, num_workers, extractor.device.type == "cuda"):
            maps = extractor.feature_maps(pixel_values)
            if not np.isfinite(maps).all():
                first = images.image_dir / images.files[done]
                raise UserError(f"the backbone gave NaN or Inf features for the batch from {first}",
                                "check the backbone weights (real ImageNet weights give finite features)")
            if array is None:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(images), *maps.shape[1:]))
            array[done : done + len(maps)] = maps
            done += len(maps)
            bar.update(len(maps))
        array.flush()
        del array


def extract_shards(extractor: RegionFeatureExtractor, files: BenchmarkFiles, work_dir: Path, chunk_size: int,
                   batch_size: int, num_workers: int) -> list[Path]:
    """Every chunk not yet on disk; a chunk's shard appears only when it is whole."""
    chunks = _chunks(len(files.images), chunk_size)
    todo = [i for i in range(len(chunks)) if not _shard_path(work_dir, i).is_file()]
    done = len(files.images) - sum(len(chunks[i]) for i in todo)
    if done:
        logger.info("resuming %s: %d of %d pictures already extracted", files.dataset, done, len(files.images))
    with tqdm(total=len(files.images), initial=done, desc=f"{files.dataset} ResNet-101 regions", unit="img") as bar:
        for i in todo:
            images = _ImageFiles(files.image_root, [files.images[j] for j in chunks[i]], extractor.preprocess)
            _extract_chunk(extractor, images, _shard_path(work_dir, i), batch_size, num_workers, bar)
    return [_shard_path(work_dir, i) for i in range(len(chunks))]


def _check_splits(files: BenchmarkFiles) -> tuple[ClassTable, dict[str, np.ndarray]]:
    """att_splits.mat, read once: it must index the pictures of this res101.mat, which is checked
    before hours of work; its classes and splits are stored beside the maps at the end."""
    table, locs = read_att_splits(files.att_splits)
    try:
        check_locs(locs, len(files.images), str(files.att_splits))
    except ValueError as error:
        raise UserError(str(error), f"use the att_splits.mat and res101.mat of the same xlsa17 {files.dataset}") from error
    if files.labels.max() >= len(table.class_names):
        raise UserError(f"{files.res101}: labels reach {files.labels.max() + 1}, {files.att_splits} has "
                        f"{len(table.class_names)} classes", f"use the files of the same xlsa17 {files.dataset}")
    return table, locs


def side_fields(files: BenchmarkFiles, table: ClassTable, locs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the authors' script stores beside the maps, in its conventions (0-based, classes first)."""
    fields = {"labels": files.labels, **{name: locs[name] for name in MAIN_LOC_FIELDS}, "att": table.attributes}
    if table.original_attributes is not None:
        fields["original_att"] = table.original_attributes
    if files.word_vectors is not None:
        fields["w2v_att"] = load_word_vectors(files.word_vectors)
    return fields


def write_feature_file(target: Path, shards: list[Path], files: BenchmarkFiles, fields: dict[str, np.ndarray],
                       attributes: dict) -> None:
    """The HDF5, filled from the shards a block at a time under a temporary name, then renamed;
    `fields` (:func:`side_fields`) and `attributes` are stored beside the maps."""
    first = np.load(shards[0], mmap_mode="r")
    shape = (len(files.images), *first.shape[1:])
    step = max(1, _WRITE_BLOCK_BYTES // (int(np.prod(shape[1:])) * 4))
    h5py = import_optional("h5py", "hdf5", "writing the region-feature HDF5")
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as h5:
        maps = h5.create_dataset("feature_map", shape=shape, dtype="float32", chunks=(1, *shape[1:]))
        begin = 0
        for shard in tqdm(shards, desc=f"writing {target.name}", unit="shard"):
            block = np.load(shard, mmap_mode="r")
            for offset in range(0, len(block), step):
                part = np.asarray(block[offset : offset + step])
                maps[begin + offset : begin + offset + len(part)] = part
            begin += len(block)
        if begin != len(files.images):
            raise RuntimeError(f"the shards hold {begin} pictures, expected {len(files.images)}")
        for name, values in fields.items():
            h5.create_dataset(name, data=values)
        h5.attrs.update(attributes)


def _resolve_autocast(autocast: str | None, device: torch.device) -> str | None:
    """``"auto"``: bf16 where the device multiplies bf16 natively, else float32 (None)."""
    if autocast != "auto":
        return autocast
    from ..training.precision import native_bf16

    return "bf16" if native_bf16(device) else None


def _start_work(work_dir: Path, manifest: dict) -> None:
    """Keep earlier shards only when they were made with exactly these pictures and settings."""
    try:
        _prepare_work_dir(work_dir, manifest, resume=True)
    except ValueError as error:
        raise UserError(f"the unfinished extraction in {work_dir} was made with other settings: {error}",
                        f"rerun with the same settings to resume it, or delete {work_dir} to start over") from error


def _remove_stale_files(target: Path) -> None:
    """Temporary HDF5s of runs killed while writing it: never complete, never read, only in the way."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def extract_region_features(
    dataset: str,
    image_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    backbone: str | os.PathLike | ResNetModel,
    *,
    crop_size: int = DEFAULT_CROP_SIZE,
    resize_size: int | None = None,
    batch_size: int = 32,
    chunk_size: int = 512,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    autocast: str | None = "auto",
    architecture: ResNetConfig | None = None,
) -> Path:
    """Write ``DATA_DIR/<DS>/feature_map_ResNet_101_<DS>.hdf5`` (see the module docstring).

    ``backbone``: a weights file, checkpoint folder or Hub id (:func:`.backbone.build_resnet101`),
    which must be a ResNet-101 (``architecture`` replaces it: small test networks), or a built
    ``ResNetModel``. ``autocast``: "auto" (bf16 where
    native), "bf16", "fp16" or None (float32). A killed run resumes with the same call.
    """
    target = feature_file(data_dir, dataset)
    if target.exists():
        # the file is renamed into place only when complete: shards beside it are a killed cleanup's
        shutil.rmtree(work_folder(data_dir, dataset), ignore_errors=True)
        raise UserError(f"{target} already exists", "delete it first to extract the features again")
    files = find_benchmark_files(dataset, image_dir, data_dir)
    table, locs = _check_splits(files)
    model = (backbone if isinstance(backbone, ResNetModel)
             else build_resnet101(backbone, architecture=architecture or resnet101_config()))
    device = torch.device(device) if device is not None else default_device()
    extractor = RegionFeatureExtractor(model, crop_size=crop_size, resize_size=resize_size, device=device,
                                       autocast=_resolve_autocast(autocast, device))
    fingerprint = backbone_id(model)
    name = backbone_name(backbone)
    settings = {"crop_size": crop_size, "resize_size": resize_size or crop_size}
    manifest = {"dataset": dataset, "num_images": len(files.images), "chunk_size": chunk_size,
                "images_sha256": hashlib.sha256("\n".join(files.images).encode()).hexdigest(),
                "backbone": fingerprint, "autocast": str(extractor.autocast_dtype), **settings}
    logger.info("extracting %d %s pictures with %s (%s), %s autocast on %s", len(files.images), dataset,
                describe_backbone(backbone),
                fingerprint[:19], extractor.autocast_dtype or "no", extractor.device)
    work_dir = work_folder(data_dir, dataset)
    _start_work(work_dir, manifest)
    shards = extract_shards(extractor, files, work_dir, chunk_size, batch_size, num_workers)
    _remove_stale_files(target)
    named = {"feature_backbone_name": name} if name is not None else {}  # an unnamed model records its hash only
    write_feature_file(target, shards, files, side_fields(files, table, locs),
                       {"feature_backbone": fingerprint, **named, **settings})
    shutil.rmtree(work_dir)
    return target
