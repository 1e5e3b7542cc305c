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
the unseen ones. With ``attributes=K`` (``--attributes K``) each row is explained as the pipeline's
``return_attributes=K`` does (:func:`~modeling_scegg.pipeline_scegg.attribute_evidence`): the row
gains "attributes" (the K attributes seen most strongly) and every prediction "supporting" and
"contradicting"; the CSV gains the columns of :func:`evidence_columns`. ``attention_maps=DIR``
(``--attention_maps DIR``) also writes, per picture, the attention maps of those K attributes
overlaid on the crop the model saw, as ``DIR/<picture stem>.<attribute>.png``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
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
from .pipeline_scegg import attention_overlays, attribute_evidence, picture_from_pixels, rank_classes

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
    attributes: list[dict] | None = None


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
def _rank_batch(model: SCEGGModel, inputs: dict[str, torch.Tensor], czsl: bool, top_k: int,
                attributes: int = 0) -> list[list[dict] | dict | None]:
    output = model(**inputs, output_attribute_scores=bool(attributes), output_attentions=bool(attributes))
    logits = output.czsl_logits if czsl else output.logits
    ranked = [rank_classes(row, model.config, czsl=czsl, top_k=top_k) if torch.isfinite(row).all() else None
              for row in logits.cpu()]
    if not attributes:
        return ranked
    return [None if ranks is None else {**attribute_evidence(scores, model.config, ranks, model.class_attributes,
                                                             attributes, czsl), "attentions": attention}
            for ranks, scores, attention in zip(ranked, output.attribute_scores, output.attentions)]


def _check_attributes(attributes: int) -> None:
    if isinstance(attributes, bool) or not isinstance(attributes, int) or attributes < 0:
        raise ValueError(f"--attributes must be a number of attributes K >= 1 (0: no explanation), got {attributes!r}")


def _rows(files: Sequence[str], ranked: list[list[dict] | dict | None]) -> list[Prediction]:
    """Prediction rows from `_rank_batch`'s rankings (lists) or explained rankings (dicts)."""
    return [Prediction(file, error="non-finite scores") if ranks is None
            else Prediction(file, ranks) if isinstance(ranks, list)
            else Prediction(file, ranks["predictions"], attributes=ranks["attributes"])
            for file, ranks in zip(files, ranked)]


def save_attention_maps(folder: Path, file: str, pixels: torch.Tensor, explained: dict, model: SCEGGModel,
                        processor: SCEGGImageProcessor) -> None:
    """`folder/<stem>.<attribute>.png` for the attributes of one explained picture, each atomically
    (in the attribute name, characters other than letters, digits, '.', '_', '-' become '_')."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [a["attribute"] for a in explained["attributes"]]
    overlays = attention_overlays(picture_from_pixels(pixels, processor), explained["attentions"], model.config, chosen)
    for name, overlay in overlays.items():
        with atomic_path(folder / f"{Path(file).stem}.{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.png") as tmp:
            overlay.save(tmp, format="PNG")


def predict_images(
    model: SCEGGForImageClassification,
    processor: SCEGGImageProcessor,
    files: Sequence[Path],
    *,
    czsl: bool = False,
    top_k: int = 5,
    batch_size: int = 16,
    attributes: int = 0,
    attention_maps: str | os.PathLike | None = None,
) -> Iterator[Prediction]:
    """One row per file, in order, classifying the usable pictures `batch_size` at a time."""
    _check_attributes(attributes)
    if attention_maps and not attributes:
        raise ValueError("attention maps are drawn for the attributes an explanation names: pass --attributes K too")
    device = model.class_attributes.device
    pending: list[tuple[str, Image.Image]] = []

    def flush() -> list[Prediction]:
        pixels = processor([image for _, image in pending], return_tensors="pt")["pixel_values"].to(device)
        names = [name for name, _ in pending]
        pending.clear()
        ranked = _rank_batch(model, {"pixel_values": pixels}, czsl, top_k, attributes)
        for name, picture, explained in zip(names, pixels, ranked):
            if attention_maps and explained is not None:
                save_attention_maps(Path(attention_maps), name, picture.cpu(), explained, model, processor)
        return _rows(names, ranked)

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
                            batch_size: int = 16, attributes: int = 0) -> Iterator[Prediction]:
    """One row per image of a region-feature file, named `file[index]`."""
    _check_attributes(attributes)
    features = read_region_features(path)
    device = model.class_attributes.device
    for start in range(0, len(features), batch_size):
        batch = torch.from_numpy(np.asarray(features[start:start + batch_size], dtype=np.float32)).to(device)
        names = [f"{path}[{i}]" for i in range(start, start + len(batch))]
        yield from _rows(names, _rank_batch(model, {"region_features": batch}, czsl, top_k, attributes))


def write_predictions(rows: Iterable[Prediction], output: str | os.PathLike | None, top_k: int,
                      attributes: int = 0) -> int:
    """Write rows as CSV or JSON lines (by the suffix of `output`; stdout gets JSON lines), the file
    atomically; returns how many rows are errors. `attributes` adds the CSV's evidence columns."""
    if output is None:
        return _write_rows(rows, sys.stdout, "jsonl", top_k, attributes)
    output = Path(output)
    kind = {".csv": "csv", ".jsonl": "jsonl"}.get(output.suffix.lower())
    if kind is None:
        raise ValueError(f"--output must end in .csv or .jsonl, got {output}")
    with atomic_path(output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        errors = _write_rows(rows, handle, kind, top_k, attributes)
    return errors


def _write_rows(rows: Iterable[Prediction], handle: io.TextIOBase, kind: str, top_k: int, attributes: int = 0) -> int:
    errors = 0
    writer = None
    if kind == "csv":
        writer = csv.writer(handle)
        writer.writerow(["file", "error"] + [f"{what}_{k}" for k in range(1, top_k + 1) for what in ("label", "score")]
                        + (evidence_header(top_k) if attributes else []))
    for row in rows:
        errors += bool(row.error)
        if writer is None:
            extra = {} if row.attributes is None else {"attributes": row.attributes}
            handle.write(json.dumps({"file": row.file, "error": row.error, "predictions": row.predictions, **extra}) + "\n")
        else:
            ranked = [value for p in row.predictions for value in (p["label"], f"{p['score']:.6f}")]
            writer.writerow([row.file, row.error, *ranked] + [""] * (2 * top_k - len(ranked))
                            + (evidence_columns(row, top_k) if attributes else []))
        handle.flush()
    return errors


def evidence_header(top_k: int) -> list[str]:
    """The CSV columns an explained prediction adds: the attributes seen, then per rank k the
    attributes supporting and contradicting the k-th class."""
    return ["attributes"] + [f"{what}_{k}" for k in range(1, top_k + 1) for what in ("supporting", "contradicting")]


def evidence_columns(row: Prediction, top_k: int) -> list[str]:
    """A row's values under :func:`evidence_header`: `name:score` (seen attributes, by e_l) and
    `name:contribution` entries joined by ';', strongest first; empty for an error row."""
    def joined(entries: list[dict], key: str) -> str:
        return ";".join(f"{e['attribute']}:{e[key]:+.4f}" for e in entries)

    per_class = [joined(p.get(side, []), "contribution") for p in row.predictions for side in ("supporting", "contradicting")]
    return [joined(row.attributes or [], "score"), *per_class] + [""] * (2 * top_k - len(per_class))


__all__ = ["MIN_IMAGE_SIDE", "MAX_IMAGE_PIXELS", "Prediction", "UnusableImage", "evidence_columns", "evidence_header",
           "expand_inputs", "open_image", "predict_images", "predict_region_features", "read_region_features",
           "save_attention_maps", "write_predictions"]
