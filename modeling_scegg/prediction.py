"""`scegg predict`: class names for many pictures (or region-feature files), one row per input.

Pictures are decoded as at training (PIL, ``convert("RGB")``, no EXIF rotation), preprocessed by
the checkpoint's image processor and classified in batches. A picture that cannot be used gets
an error row naming the file and the reason, and the others go on:

* an empty (zero-byte) file, a file PIL cannot identify, a truncated image;
* a side under :data:`MIN_IMAGE_SIDE` pixels (nothing left to see once upscaled to the crop);
* more than :data:`MAX_IMAGE_PIXELS` pixels (PIL's decompression-bomb limit), checked on the
  header before anything is decoded.

Rows are ``{"file", "error", "predictions": [{"label", "score"}, ...]}`` with the pipeline's
ranking (:func:`~modeling_scegg.pipeline_scegg.rank_classes`): GZSL over every class, or CZSL over
the unseen ones.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .atomic import atomic_path
from .data.images import IMAGE_EXTENSIONS
from .image_processing_scegg import SCEGGImageProcessor
from .modeling_scegg import SCEGGForImageClassification, SCEGGModel
from .pipeline_scegg import rank_classes

MIN_IMAGE_SIDE = 32
MAX_IMAGE_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS default: above it PIL warns of a decompression bomb
FEATURE_SUFFIXES = (".npy", ".safetensors")


class UnusableImage(ValueError):
    """A picture that cannot be classified; the message is the reason given in its row."""


@dataclass
class Prediction:
    file: str
    predictions: list[dict] = field(default_factory=list)
    error: str = ""


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; folders replaced by the pictures under them (recursively, sorted)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not p.name.startswith("."))
        else:
            files.append(path)
    return files


def open_image(path: Path) -> Image.Image:
    """The decoded RGB picture, or ``UnusableImage`` saying why not."""
    if not path.is_file():
        raise UnusableImage("no such file")
    if path.stat().st_size == 0:
        raise UnusableImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # _check_size refuses those sizes
            with Image.open(path) as image:
                _check_size(image.size)
                image.load()
                return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise UnusableImage(f"too large to decode safely ({error})") from error
    except UnidentifiedImageError as error:
        raise UnusableImage("not an image PIL can read") from error
    except OSError as error:  # truncated or corrupt data inside a valid header
        raise UnusableImage(f"unreadable image data ({error})") from error


def _check_size(size: tuple[int, int]) -> None:
    width, height = size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise UnusableImage(f"too small: {width} x {height} pixels (each side needs at least {MIN_IMAGE_SIDE})")
    if width * height > MAX_IMAGE_PIXELS:
        raise UnusableImage(f"too large: {width} x {height} = {width * height / 1e6:.0f} megapixels "
                            f"(at most {MAX_IMAGE_PIXELS / 1e6:.0f} are decoded)")


@torch.no_grad()
def _rank_batch(model: SCEGGModel, inputs: dict[str, torch.Tensor], czsl: bool, top_k: int) -> list[list[dict]]:
    output = model(**inputs)
    logits = output.czsl_logits if czsl else output.logits
    return [rank_classes(row, model.config, czsl=czsl, top_k=top_k) if torch.isfinite(row).all() else None
            for row in logits.cpu()]


def _rows(files: Sequence[str], ranked: list[list[dict] | None]) -> list[Prediction]:
    return [Prediction(file, ranks) if ranks is not None else Prediction(file, error="non-finite scores")
            for file, ranks in zip(files, ranked)]


def predict_images(
    model: SCEGGForImageClassification,
    processor: SCEGGImageProcessor,
    files: Sequence[Path],
    *,
    czsl: bool = False,
    top_k: int = 5,
    batch_size: int = 16,
) -> Iterator[Prediction]:
    """One row per file, in order, classifying the usable pictures `batch_size` at a time."""
    device = model.class_attributes.device
    pending: list[tuple[str, Image.Image]] = []

    def flush() -> list[Prediction]:
        pixels = processor([image for _, image in pending], return_tensors="pt")["pixel_values"].to(device)
        rows = _rows([name for name, _ in pending], _rank_batch(model, {"pixel_values": pixels}, czsl, top_k))
        pending.clear()
        return rows

    with tqdm(total=len(files), desc="predict", unit="img") as bar:
        for path in files:
            try:
                pending.append((str(path), open_image(path)))
            except UnusableImage as error:
                yield from flush() if pending else ()
                yield Prediction(str(path), error=str(error))
            if len(pending) == batch_size:
                yield from flush()
            bar.update(1)
        if pending:
            yield from flush()


def read_region_features(path: Path) -> np.ndarray:
    """(B, R, D) region features from .npy (never unpickled) or .safetensors (tensor 'region_features')."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(path)
        if "region_features" not in tensors:
            raise KeyError(f"{path} has no tensor 'region_features' (found {sorted(tensors)})")
        return tensors["region_features"]
    return np.load(path, allow_pickle=False)


def predict_region_features(model: SCEGGModel, path: Path, *, czsl: bool = False, top_k: int = 5,
                            batch_size: int = 16) -> Iterator[Prediction]:
    """One row per image of a region-feature file, named `file[index]`."""
    features = read_region_features(path)
    device = model.class_attributes.device
    for start in range(0, len(features), batch_size):
        batch = torch.from_numpy(np.asarray(features[start:start + batch_size], dtype=np.float32)).to(device)
        names = [f"{path}[{i}]" for i in range(start, start + len(batch))]
        yield from _rows(names, _rank_batch(model, {"region_features": batch}, czsl, top_k))


def write_predictions(rows: Iterable[Prediction], output: str | os.PathLike | None, top_k: int) -> int:
    """Write rows as CSV or JSON lines (by the suffix of `output`; stdout gets JSON lines), the file
    atomically; returns how many rows are errors."""
    if output is None:
        return _write_rows(rows, sys.stdout, "jsonl", top_k)
    output = Path(output)
    kind = {".csv": "csv", ".jsonl": "jsonl"}.get(output.suffix.lower())
    if kind is None:
        raise ValueError(f"--output must end in .csv or .jsonl, got {output}")
    with atomic_path(output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        errors = _write_rows(rows, handle, kind, top_k)
    return errors


def _write_rows(rows: Iterable[Prediction], handle: io.TextIOBase, kind: str, top_k: int) -> int:
    errors = 0
    writer = None
    if kind == "csv":
        writer = csv.writer(handle)
        writer.writerow(["file", "error"] + [f"{what}_{k}" for k in range(1, top_k + 1) for what in ("label", "score")])
    for row in rows:
        errors += bool(row.error)
        if writer is None:
            handle.write(json.dumps({"file": row.file, "error": row.error, "predictions": row.predictions}) + "\n")
        else:
            ranked = [value for p in row.predictions for value in (p["label"], f"{p['score']:.6f}")]
            writer.writerow([row.file, row.error, *ranked] + [""] * (2 * top_k - len(ranked)))
        handle.flush()
    return errors


__all__ = ["MIN_IMAGE_SIDE", "MAX_IMAGE_PIXELS", "Prediction", "UnusableImage", "expand_inputs", "open_image",
           "predict_images", "predict_region_features", "read_region_features", "write_predictions"]
