"""`scegg predict`: class names for many pictures (or region-feature files), one row per input.

Every input is handled on its own: whatever goes wrong with one picture or feature file becomes
that input's error row (``{"file", "error", "predictions": []}``) and the others go on. Pictures
are read by :func:`~modeling_scegg.image_processing_scegg.load_picture`, the reader of every path
(formats checked on the content, EXIF orientation applied, 16-bit greyscale scaled, sizes
bounded before decoding: see that module), and each is preprocessed as soon as it is read, so a
batch holds crops, never full-resolution photos. Region-feature files are memory-mapped and
checked (shape, finite values, a safetensors header that fits its file) before use.

Rows carry the pipeline's ranking (:func:`~modeling_scegg.pipeline_scegg.rank_classes`): GZSL over
every class, or CZSL over the unseen ones. They are written as they are made; an output file is
renamed into place at the end, and also when the run stops early, so finished rows are never
lost. The exit status (:mod:`modeling_scegg.errors`) is 0 when every input got predictions, 1 when
some got an error row, 2 when the run could not start or stopped early.

With ``attributes=K`` (``--attributes K``) each row is explained as the pipeline's
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
import struct
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import atomic_path
from .data.images import IMAGE_EXTENSIONS
from .errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED, UserError
from .image_processing_scegg import SCEGGImageProcessor, UnusableImage, load_picture
from .modeling_scegg import SCEGGModel
from .pipeline_scegg import attention_overlays, attribute_evidence, picture_from_pixels, rank_classes

FEATURE_SUFFIXES = (".npy", ".safetensors")
FEATURE_TENSOR = "region_features"
OUTPUT_KINDS = {".csv": "csv", ".jsonl": "jsonl"}
MAX_SAFETENSORS_HEADER = 100_000_000  # the limit the safetensors format itself sets


@dataclass
class Prediction:
    file: str
    predictions: list[dict] = field(default_factory=list)
    error: str = ""
    attributes: list[dict] | None = None
    # (A, R), only while the maps of an explained picture are to be drawn (``attention_maps``)
    attentions: torch.Tensor | None = field(default=None, repr=False)


def check_output(output: str | os.PathLike | None) -> None:
    """An output file must be one of the kinds the rows are written as (by its suffix)."""
    if output is not None and Path(output).suffix.lower() not in OUTPUT_KINDS:
        raise UserError(f"--output must end in .csv or .jsonl, got {output}", "name the output file.csv or file.jsonl")


def check_options(top_k: int, batch_size: int, output: str | os.PathLike | None = None, attributes: int = 0,
                  attention_maps: str | os.PathLike | None = None) -> None:
    """Refuse, before any model is loaded, values that would crash late or mean nothing."""
    check_output(output)
    if top_k < 1:
        raise UserError(f"--top_k must be at least 1, got {top_k}", "pass how many classes each row should name, e.g. --top_k 5")
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}",
                        "pass how many pictures to classify at once, e.g. --batch_size 16")
    if isinstance(attributes, bool) or not isinstance(attributes, int) or attributes < 0:
        raise UserError(f"--attributes must be a number of attributes K >= 1 (0: no explanation), got {attributes!r}",
                        "pass how many attributes to explain each row with, e.g. --attributes 5")
    if attention_maps and not attributes:
        raise UserError("attention maps are drawn for the attributes an explanation names",
                        "pass --attributes K too, e.g. --attributes 5 --attention_maps maps/")


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; folders replaced by the pictures and feature files under them (recursively,
    sorted). Inputs that hold nothing usable are a mistake, not an empty result."""
    files, skipped = [], set()
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        for candidate in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if candidate.suffix.lower() in IMAGE_EXTENSIONS or candidate.suffix.lower() in FEATURE_SUFFIXES:
                files.append(candidate)
            else:
                skipped.add(candidate.suffix.lower() or candidate.name)
    if not files:
        raise UserError(
            f"no pictures or feature files in {', '.join(map(str, paths))}"
            + (f" (skipped: {', '.join(sorted(skipped))})" if skipped else ""),
            f"give pictures ({', '.join(sorted(IMAGE_EXTENSIONS))}) or region-feature files "
            f"({', '.join(FEATURE_SUFFIXES)}); convert other formats (e.g. HEIC) to JPEG first")
    return files


def read_picture(path: Path, processor: SCEGGImageProcessor) -> torch.Tensor:
    """(3, crop, crop) pixels of one picture (:func:`load_picture`; ``UnusableImage`` says why not):
    read and preprocessed at once, so the full-resolution picture is dropped before the next one is read."""
    return processor(load_picture(path, processor.decode_size), return_tensors="pt")["pixel_values"][0]


@torch.no_grad()
def _rank_batch(model: SCEGGModel, names: list[str], inputs: dict[str, torch.Tensor], czsl: bool,
                top_k: int, attributes: int = 0, attentions: bool = False) -> list[Prediction]:
    """One row per input of a batch; a failing forward pass gives every input of the batch its error
    row. With `attributes` the rows carry the pipeline's evidence, and with `attentions` (maps to
    draw) the attention of each explained row too."""
    attentions = attentions and bool(attributes)
    try:
        output = model(**inputs, output_attribute_scores=bool(attributes), output_attentions=attentions)
    except Exception as error:
        return [Prediction(name, error=f"classification failed ({type(error).__name__}: {error})") for name in names]
    logits = output.czsl_logits if czsl else output.logits
    rows = [Prediction(name, rank_classes(row, model.config, czsl=czsl, top_k=top_k)) if torch.isfinite(row).all()
            else Prediction(name, error="non-finite scores") for name, row in zip(names, logits.cpu())]
    if attributes:
        class_attributes = model.class_attributes.detach().cpu()  # once per batch, not one device copy per row
        maps = output.attentions if attentions else [None] * len(rows)
        for row, scores, attention in zip(rows, output.attribute_scores.cpu(), maps):
            if not row.error:
                explained = attribute_evidence(scores, model.config, row.predictions, class_attributes, attributes, czsl)
                row.predictions, row.attributes, row.attentions = explained["predictions"], explained["attributes"], attention
    return rows


def save_attention_maps(folder: Path, row: Prediction, pixels: torch.Tensor, model: SCEGGModel,
                        processor: SCEGGImageProcessor) -> None:
    """`folder/<stem>.<attribute>.png` for the attributes of one explained picture, each atomically
    (in the attribute name, characters other than letters, digits, '.', '_', '-' become '_')."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [a["attribute"] for a in row.attributes]
    overlays = attention_overlays(picture_from_pixels(pixels, processor), row.attentions, model.config, chosen)
    for name, overlay in overlays.items():
        with atomic_path(folder / f"{Path(row.file).stem}.{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.png") as tmp:
            overlay.save(tmp, format="PNG")


def predict_inputs(
    model: SCEGGModel,
    processor: SCEGGImageProcessor | None,
    files: Sequence[Path],
    *,
    czsl: bool = False,
    top_k: int = 5,
    batch_size: int = 16,
    attributes: int = 0,
    attention_maps: str | os.PathLike | None = None,
) -> Iterator[Prediction]:
    """One row per picture and per image of a feature file, in the order of `files`; pictures are
    classified `batch_size` at a time (``processor`` may be None when there are none); `attributes`
    and `attention_maps` explain them (see the module's docstring)."""
    check_options(top_k, batch_size, None, attributes, attention_maps)
    device = model.class_attributes.device
    pending: list[tuple[str, torch.Tensor]] = []

    def flush() -> list[Prediction]:
        names, pixels = [name for name, _ in pending], torch.stack([p for _, p in pending])
        pending.clear()
        rows = _rank_batch(model, names, {"pixel_values": pixels.to(device)}, czsl, top_k, attributes,
                           attentions=bool(attention_maps))
        for row, picture in zip(rows, pixels):
            if row.attentions is not None:
                save_attention_maps(Path(attention_maps), row, picture, model, processor)
                row.attentions = None
        return rows

    with tqdm(total=len(files), desc="predict", unit="input") as bar:
        for path in files:
            if path.suffix.lower() in FEATURE_SUFFIXES:
                yield from flush() if pending else ()
                yield from _feature_file_rows(model, path, czsl, top_k, batch_size, attributes)
            else:
                try:
                    pending.append((str(path), read_picture(path, processor)))
                except Exception as error:  # any failure of one picture is that picture's row
                    yield from flush() if pending else ()
                    yield Prediction(str(path), error=_reason(error))
            if len(pending) == batch_size:
                yield from flush()
            bar.update(1)
        if pending:
            yield from flush()


def _reason(error: Exception) -> str:
    return str(error) if isinstance(error, (UnusableImage, UserError)) else f"{type(error).__name__}: {error}"


def _feature_file_rows(model: SCEGGModel, path: Path, czsl: bool, top_k: int, batch_size: int,
                       attributes: int = 0) -> Iterator[Prediction]:
    """The rows of one feature file as they are ranked; when the file cannot be used, one error row
    naming it (or, after some rows, the rest of it as ``file[start:]``)."""
    done = 0
    try:
        with ExitStack() as stack:
            features = open_region_features(path, stack)
            _check_feature_shape(path, features.shape, model.config)
            for start in range(0, features.shape[0], batch_size):
                stop = min(start + batch_size, features.shape[0])  # safetensors slices do not clamp
                rows = _feature_batch_rows(model, path, start, features[start:stop], czsl, top_k, attributes)
                yield from rows
                done += len(rows)
    except Exception as error:
        yield Prediction(str(path) if not done else f"{path}[{done}:]", error=_reason(error))


def _feature_batch_rows(model: SCEGGModel, path: Path, start: int, batch, czsl: bool, top_k: int,
                        attributes: int = 0) -> list[Prediction]:
    """Rows of one batch of a feature file; images with NaN or infinite features get error rows."""
    batch = torch.from_numpy(np.array(batch, dtype=np.float32))  # a copy: memory maps are read-only
    names = [f"{path}[{i}]" for i in range(start, start + len(batch))]
    finite = torch.isfinite(batch).flatten(1).all(dim=1)
    ranked = iter(_rank_batch(model, [n for n, ok in zip(names, finite) if ok],
                              {"region_features": batch[finite].to(model.class_attributes.device)}, czsl, top_k,
                              attributes)
                  if finite.any() else [])
    return [next(ranked) if ok else Prediction(name, error="region features hold NaN or infinite values")
            for name, ok in zip(names, finite)]


def _check_feature_shape(path: Path, shape: tuple[int, ...], config) -> None:
    expected = (config.num_regions, config.feature_dim)
    if len(shape) != 3 or tuple(shape[1:]) != expected:
        raise UnusableImage(f"region features of shape {tuple(shape)}, expected (B, {expected[0]}, {expected[1]}) "
                            f"(B, num_regions, feature_dim) for this model")


def open_region_features(path: Path, stack: ExitStack):
    """A lazily read (B, R, D) array of a feature file: a memory-mapped .npy (never unpickled) or
    the tensor 'region_features' of a .safetensors file, whose header is checked against the file
    size first. Only the batches used are ever read."""
    if not path.is_file():
        raise UnusableImage("no such file")
    if path.suffix.lower() == ".safetensors":
        _check_safetensors_header(path)
        from safetensors import safe_open

        handle = stack.enter_context(safe_open(str(path), framework="np"))
        if FEATURE_TENSOR not in handle.keys():
            raise UnusableImage(f"no tensor {FEATURE_TENSOR!r} (found {sorted(handle.keys())[:5]})")
        return _SafetensorsArray(handle.get_slice(FEATURE_TENSOR))
    _check_npy_header(path)
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise UnusableImage(f"region features of dtype {array.dtype}, expected floating-point numbers")
    return array


def _check_npy_header(path: Path) -> None:
    """Refuse, from the header alone, a .npy of Python objects: loading it would unpickle."""
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(handle)
        except ValueError as error:
            raise UnusableImage(f"not a .npy file ({error})") from error
    if dtype.hasobject:
        raise UnusableImage("holds Python objects (a pickle), which are never loaded; save a numeric (B, R, D) array")


class _SafetensorsArray:
    """Shape and slicing of one safetensors tensor, read batch by batch."""

    def __init__(self, tensor_slice) -> None:
        self.slice = tensor_slice
        self.shape = tuple(tensor_slice.get_shape())
        if tensor_slice.get_dtype() not in ("F16", "F32", "F64"):
            raise UnusableImage(f"region features of dtype {tensor_slice.get_dtype()}, expected F16, F32 or F64")

    def __getitem__(self, index: slice) -> np.ndarray:
        return self.slice[index]


def _check_safetensors_header(path: Path) -> None:
    """The 8-byte header length and every tensor's byte range must fit inside the file: a header
    claiming gigabytes is refused before anything is allocated."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise UnusableImage(f"not a safetensors file ({size} bytes, shorter than its header)")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise UnusableImage(f"corrupt safetensors header: it claims {header_size} bytes in a file of {size}")
        try:
            header = json.loads(handle.read(header_size))
            ends = [int(t["data_offsets"][1]) for name, t in header.items() if name != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise UnusableImage(f"corrupt safetensors header ({error})") from error
    if ends and max(ends) > size - 8 - header_size:
        raise UnusableImage(f"truncated safetensors file: its tensors need {max(ends)} bytes, "
                            f"{size - 8 - header_size} are there")


@dataclass
class _Tally:
    rows: int = 0
    errors: int = 0


def write_predictions(rows: Iterable[Prediction], output: str | os.PathLike | None, top_k: int,
                      attributes: int = 0) -> int:
    """Write rows as CSV or JSON lines (by the suffix of `output`; stdout gets JSON lines) as they
    come, and return the exit status. The file is renamed into place at the end, also when the run
    stops early, which then raises :class:`UserError` saying how many rows were written. `attributes`
    adds the CSV's evidence columns."""
    tally, stopped = _Tally(), None
    with _output(output) as (handle, kind):
        try:
            _write_rows(rows, handle, kind, top_k, tally, attributes)
        except BaseException as error:  # the finished rows are kept: the file is still renamed into place
            stopped = error
    if isinstance(stopped, Exception):
        raise UserError(f"the run stopped after {tally.rows} rows: {type(stopped).__name__}: {stopped}",
                        f"{output or 'stdout'} holds the {tally.rows} finished rows; rerun the remaining inputs") from stopped
    if stopped is not None:  # an interrupt stays an interrupt
        raise stopped
    return _exit_status(tally)


@contextmanager
def _output(output: str | os.PathLike | None) -> Iterator[tuple[io.TextIOBase, str]]:
    """(handle, "csv" | "jsonl"): stdout, or a temporary file renamed to `output` at the end."""
    if output is None:
        yield sys.stdout, "jsonl"
        return
    check_output(output)
    kind = OUTPUT_KINDS[Path(output).suffix.lower()]
    with atomic_path(output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        yield handle, kind


def _exit_status(tally: _Tally) -> int:
    print(f"{tally.rows} rows, {tally.errors} rows failed", file=sys.stderr)
    return EXIT_SOME_INPUTS_FAILED if tally.errors else EXIT_OK


def _write_rows(rows: Iterable[Prediction], handle: io.TextIOBase, kind: str, top_k: int, tally: _Tally,
                attributes: int = 0) -> None:
    writer = None
    if kind == "csv":
        writer = csv.writer(handle)
        writer.writerow(["file", "error"] + [f"{what}_{k}" for k in range(1, top_k + 1) for what in ("label", "score")]
                        + (evidence_header(top_k) if attributes else []))
    for row in rows:
        if writer is None:
            extra = {} if row.attributes is None else {"attributes": row.attributes}
            handle.write(json.dumps({"file": row.file, "error": row.error, "predictions": row.predictions, **extra}) + "\n")
        else:
            ranked = [value for p in row.predictions for value in (p["label"], f"{p['score']:.6f}")]
            writer.writerow([row.file, row.error, *ranked] + [""] * (2 * top_k - len(ranked))
                            + (evidence_columns(row, top_k) if attributes else []))
        handle.flush()
        tally.rows += 1
        tally.errors += bool(row.error)


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


__all__ = ["FEATURE_SUFFIXES", "Prediction", "UnusableImage", "check_options", "check_output", "evidence_columns",
           "evidence_header", "expand_inputs", "open_region_features", "predict_inputs", "read_picture",
           "save_attention_maps", "write_predictions"]
