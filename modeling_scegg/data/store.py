"""Arrow feature store: region features are written once as float16 and read back without RAM growth.

Full-size region features (CUB: 11788 x 196 x 2048) do not fit in memory, so every source (xlsa17
HDF5, images, Hub, synthetic) streams its batches through :func:`write_split`, which writes one
memory-mapped Arrow file per split. Training reads it through :class:`RegionFeatureReader`, which
copies the requested rows straight from the file with ``pread`` into a numpy batch: no per-row
formatter (``with_format("torch")`` is several times slower and upcasts float16 to float32) and
no memory-mapped pages counted against the process, so resident memory stays flat however large
the split is.
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch
from datasets import Array2D, ClassLabel, Dataset, Features, List, Value
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm

REGION_COLUMN = "region_features"
LABEL_COLUMN = "label"
GLOBAL_COLUMN = "global_features"
ARROW_FILE_NAME = "data.arrow"
# Record batches of ~16 MiB keep every list offset far below the int32 limit and give the reader
# few enough chunks that locating a row is a single searchsorted.
_RECORD_BATCH_BYTES = 16 * 2**20
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_FLOAT32_BATCH_BYTES = 64 * 2**20


def region_feature_features(
    num_regions: int, feature_dim: int, class_names: list[str], with_global: bool = False
) -> Features:
    """The schema every split of every source is stored with, so one reader serves them all."""
    if num_regions < 1 or feature_dim < 1:
        raise ValueError(f"num_regions and feature_dim must be >= 1, got R={num_regions}, D={feature_dim}")
    if not class_names:
        raise ValueError("class_names must name at least one class, got an empty list")
    columns = {
        REGION_COLUMN: Array2D(shape=(num_regions, feature_dim), dtype="float16"),
        LABEL_COLUMN: ClassLabel(names=list(class_names)),
    }
    if with_global:
        columns[GLOBAL_COLUMN] = List(Value("float32"), length=feature_dim)
    return Features(columns)


def split_batches(
    region_blocks: Iterable[np.ndarray], rows: np.ndarray, labels: np.ndarray, pooled: np.ndarray | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Batches for :func:`write_split`: each block of (n, R, D) region features with the labels
    (and global features) of its images, which are the next n entries of ``rows`` (indices into
    ``labels`` / ``pooled``): every source streams its region blocks and keeps the small columns whole."""
    done = 0
    for regions in region_blocks:
        block = rows[done : done + len(regions)]
        batch = {REGION_COLUMN: regions, LABEL_COLUMN: labels[block]}
        if pooled is not None:
            batch[GLOBAL_COLUMN] = pooled[block]
        done += len(regions)
        yield batch


def region_shape(features: Features) -> tuple[int, int]:
    """(R, D) of a region-feature schema, with a clear error for a schema of another kind."""
    feature = features.get(REGION_COLUMN)
    if not isinstance(feature, Array2D):
        raise ValueError(
            f"expected a '{REGION_COLUMN}' column of type Array2D(R, D), got {feature!r} in {features}"
        )
    num_regions, feature_dim = feature.shape
    return int(num_regions), int(feature_dim)


def _region_array(values: np.ndarray, features: Features) -> pa.ExtensionArray:
    """Wrap an (n, R, D) float16 block as the Array2D extension array without copying it."""
    n, num_regions, feature_dim = values.shape
    flat = pa.array(values.reshape(-1))
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, n * num_regions * feature_dim + 1, feature_dim, dtype=np.int32)), flat)
    outer = pa.ListArray.from_arrays(pa.array(np.arange(0, n * num_regions + 1, num_regions, dtype=np.int32)), inner)
    return pa.ExtensionArray.from_storage(features.arrow_schema.field(REGION_COLUMN).type, outer)


def _check_batch(batch: dict[str, np.ndarray], features: Features, index: int, where: str) -> dict[str, np.ndarray]:
    """Validate one incoming batch and return it converted to the stored dtypes.

    Checking here, before anything reaches the file, is what lets every source report bad
    input by field, expected and received shape instead of failing deep inside pyarrow.
    """
    num_regions, feature_dim = region_shape(features)
    num_classes = features[LABEL_COLUMN].num_classes
    with_global = GLOBAL_COLUMN in features
    expected_keys = {REGION_COLUMN, LABEL_COLUMN} | ({GLOBAL_COLUMN} if with_global else set())
    if set(batch) != expected_keys:
        raise ValueError(f"{where}: batch {index} has fields {sorted(batch)}, expected {sorted(expected_keys)}")
    regions = np.asarray(batch[REGION_COLUMN])
    if regions.ndim != 3 or regions.shape[1:] != (num_regions, feature_dim):
        raise ValueError(
            f"{where}: batch {index} field '{REGION_COLUMN}' must have shape (n, {num_regions}, {feature_dim}), "
            f"got {regions.shape}"
        )
    if not np.issubdtype(regions.dtype, np.floating):
        raise ValueError(f"{where}: batch {index} field '{REGION_COLUMN}' must be floating point, got {regions.dtype}")
    n = regions.shape[0]
    labels = np.asarray(batch[LABEL_COLUMN])
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: batch {index} field '{LABEL_COLUMN}' must be ({n},) integers, got {labels.shape} {labels.dtype}"
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: batch {index} field '{LABEL_COLUMN}' must lie in [0, {num_classes}), "
            f"got values in [{labels.min()}, {labels.max()}]"
        )
    regions16 = _to_float16(regions, REGION_COLUMN, index, where)
    out = {REGION_COLUMN: regions16, LABEL_COLUMN: labels.astype(np.int64)}
    if with_global:
        pooled = np.asarray(batch[GLOBAL_COLUMN])
        if pooled.shape != (n, feature_dim):
            raise ValueError(
                f"{where}: batch {index} field '{GLOBAL_COLUMN}' must have shape ({n}, {feature_dim}), got {pooled.shape}"
            )
        pooled = pooled.astype(np.float32)
        if not np.isfinite(pooled).all():
            raise ValueError(f"{where}: batch {index} field '{GLOBAL_COLUMN}' contains NaN or Inf values")
        out[GLOBAL_COLUMN] = pooled
    return out


def _to_float16(values: np.ndarray, field: str, index: int, where: str) -> np.ndarray:
    """Cast to float16, refusing NaN/Inf and values that float16 cannot hold (they would become Inf)."""
    if values.dtype == np.float16:
        converted = np.ascontiguousarray(values)
    else:  # torch's vectorised cast is ~3x faster than numpy's float32 -> float16
        converted = torch.from_numpy(np.ascontiguousarray(values)).to(torch.float16).numpy()
    if np.isfinite(converted).all():
        return converted
    if not np.isfinite(values).all():
        raise ValueError(f"{where}: batch {index} field '{field}' contains NaN or Inf values")
    raise ValueError(
        f"{where}: batch {index} field '{field}' has values beyond the float16 range (|x| > {_FLOAT16_MAX}): "
        f"max |x| = {float(np.abs(values).max())}"
    )


def _batch_table(batch: dict[str, np.ndarray], features: Features) -> pa.Table:
    columns = {REGION_COLUMN: _region_array(batch[REGION_COLUMN], features), LABEL_COLUMN: pa.array(batch[LABEL_COLUMN])}
    if GLOBAL_COLUMN in batch:
        pooled = batch[GLOBAL_COLUMN]
        columns[GLOBAL_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(pooled.reshape(-1)), pooled.shape[1])
    return pa.table(columns, schema=features.arrow_schema)


def _flush(writer: ArrowWriter, pending: list[dict[str, np.ndarray]], features: Features, rows_per_batch: int | None) -> None:
    """Write the pending rows in whole record batches (all of them when ``rows_per_batch`` is None)."""
    if not pending:
        return
    rows = pending[0] if len(pending) == 1 else {key: np.concatenate([b[key] for b in pending]) for key in pending[0]}
    total = len(rows[LABEL_COLUMN])
    cut = total if rows_per_batch is None else total - total % rows_per_batch
    pending.clear()
    if cut:
        writer.write_table(_batch_table({k: v[:cut] for k, v in rows.items()}, features))
    if cut < total:
        pending.append({k: v[cut:] for k, v in rows.items()})


def replace_dir(source: Path, target: Path) -> None:
    """Move a finished folder into place; an older copy is moved aside first (rename is atomic)."""
    if target.exists():
        stale = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, stale)
        os.replace(source, target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(source, target)


def _write_batches(
    batches: Iterable[dict[str, np.ndarray]], features: Features, path: Path, rows_per_batch: int, num_rows: int | None,
    desc: str, where: str,
) -> int:
    """Check and write every batch; small incoming batches are gathered into full record batches."""
    written, pending = 0, []
    with ArrowWriter(features=features, path=str(path), writer_batch_size=rows_per_batch) as writer:
        with tqdm(total=num_rows, desc=desc, unit="img") as bar:
            for index, batch in enumerate(batches):
                checked = _check_batch(batch, features, index, where)
                pending.append(checked)
                if sum(len(b[LABEL_COLUMN]) for b in pending) >= rows_per_batch:
                    _flush(writer, pending, features, rows_per_batch)
                written += len(checked[LABEL_COLUMN])
                bar.update(len(checked[LABEL_COLUMN]))
            _flush(writer, pending, features, None)
        writer.finalize()
    return written


def write_split(
    batches: Iterable[dict[str, np.ndarray]],
    features: Features,
    out_dir: str | os.PathLike,
    num_rows: int | None = None,
    desc: str = "",
) -> Dataset:
    """Stream batches into ``out_dir/data.arrow`` and return the memory-mapped split.

    The file is built in a temporary sibling folder and renamed into place only when complete,
    so an interrupted conversion never leaves a split that looks finished. ``num_rows`` (when
    known) drives the progress bar and is checked against what was actually written.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp_dir.mkdir()
    num_regions, feature_dim = region_shape(features)
    rows_per_record_batch = max(1, _RECORD_BATCH_BYTES // (num_regions * feature_dim * 2))
    where = f"write_split({out_dir})"
    try:
        written = _write_batches(
            batches, features, tmp_dir / ARROW_FILE_NAME, rows_per_record_batch, num_rows, desc or f"writing {out_dir.name}",
            where
        )
        if num_rows is not None and written != num_rows:
            raise ValueError(f"{where}: expected {num_rows} rows, the batches held {written}")
        replace_dir(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return load_split(out_dir)


def load_split(out_dir: str | os.PathLike) -> Dataset:
    """Memory-map a split written by :func:`write_split` (no data is read)."""
    path = Path(out_dir) / ARROW_FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no converted split at {path}")
    return Dataset.from_file(str(path))


def region_values(chunk: pa.Array, num_regions: int, feature_dim: int) -> pa.Array:
    """The flat float values behind an Array2D chunk, checked to be dense and null-free."""
    storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
    if storage.null_count:
        raise ValueError(f"'{REGION_COLUMN}' has {storage.null_count} missing rows; every image needs features")
    values = storage.flatten().flatten()
    if len(values) != len(chunk) * num_regions * feature_dim:
        raise ValueError(
            f"'{REGION_COLUMN}' chunk holds {len(values)} values, expected {len(chunk)} x {num_regions} x {feature_dim}"
        )
    return values


def _root(buffer: pa.Buffer) -> pa.Buffer:
    """The buffer that `buffer` is a slice of: for a memory-mapped table, the whole mapped file."""
    while buffer.parent is not None:
        buffer = buffer.parent
    return buffer


@dataclass
class _RowLocations:
    """Where every row of a split lives: `sources` are file paths (rows read with pread at a byte
    offset) or flat in-RAM arrays (rows copied from an element offset)."""

    sources: list[str | np.ndarray] = field(default_factory=list)
    source: list[np.ndarray] = field(default_factory=list)
    offset: list[np.ndarray] = field(default_factory=list)
    _ids: dict = field(default_factory=dict)

    def add(self, key, source: str | np.ndarray, count: int, first: int, stride: int) -> None:
        if key not in self._ids:
            self._ids[key] = len(self.sources)
            self.sources.append(source)
        self.source.append(np.full(count, self._ids[key], dtype=np.int32))
        self.offset.append(first + stride * np.arange(count, dtype=np.int64))


class RegionFeatureReader:
    """Fast Arrow -> numpy path for training (no per-row formatter; with_format("torch") is ~5x
    slower and upcasts float16 to float32).

    The reader asks `datasets` only through its public API for the rows of the split, as
    zero-copy Arrow views (`with_format("arrow")`, which also applies any index mapping left by
    `select`, `filter`, `shuffle` or `train_test_split`), then follows each view's buffer to the
    memory-mapped file it is a slice of (pyarrow's `Buffer.parent`). Those rows are copied with
    ``os.preadv`` straight from the file into the output batch, so the process never touches the
    mapping and its resident memory does not grow with the rows read. Whatever table a dataset
    was derived into (a `map` writes a new file, a `cast` in RAM builds new buffers), the bytes
    read are the bytes its Arrow arrays hold; rows that live in RAM are copied from there.
    """

    def __init__(self, dataset: Dataset):
        self.num_regions, self.feature_dim = region_shape(dataset.features)
        self._dtype = np.dtype(dataset.features[REGION_COLUMN].dtype)
        self._row_values = self.num_regions * self.feature_dim
        self._row_bytes = self._row_values * self._dtype.itemsize
        rows = dataset.with_format("arrow", columns=[REGION_COLUMN, LABEL_COLUMN])[:]
        self.labels: np.ndarray = rows.column(LABEL_COLUMN).to_numpy().astype(np.int64)
        locations = self._locate(rows.column(REGION_COLUMN), [f["filename"] for f in dataset.cache_files])
        self._sources = locations.sources
        self._source = np.concatenate(locations.source) if locations.source else np.zeros(0, dtype=np.int32)
        self._offset = np.concatenate(locations.offset) if locations.offset else np.zeros(0, dtype=np.int64)
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def batch_rows(self, requested: int) -> int:
        """`requested`, capped so that one batch converted to float32 stays under 64 MiB: a
        batch of 256 CUB images at 14 x 14 x 2048 is 400 MB in float32, and inference holds
        a few such tensors at once (normalised regions, attention products)."""
        return max(1, min(requested, _FLOAT32_BATCH_BYTES // (self._row_values * 4)))

    @property
    def file_backed(self) -> bool:
        """Whether every row is read from a file (pread) rather than copied from RAM."""
        return all(isinstance(source, str) for source in self._sources)

    def _locate(self, column: pa.ChunkedArray, files: list[str]) -> _RowLocations:
        locations, mapped = _RowLocations(), {}
        for chunk in column.chunks:
            if not len(chunk):
                continue
            values = region_values(chunk, self.num_regions, self.feature_dim)
            buffer, root = values.buffers()[1], _root(values.buffers()[1])
            first = buffer.address + values.offset * self._dtype.itemsize
            if root.address not in mapped:
                mapped[root.address] = self._mapped_file(root, values, first, files)
            path = mapped[root.address]
            if path is not None:
                locations.add(path, path, len(chunk), first - root.address, self._row_bytes)
            else:  # a zero-copy view of the chunk's values
                flat = np.frombuffer(buffer, dtype=self._dtype, count=buffer.size // self._dtype.itemsize)
                locations.add(buffer.address, flat, len(chunk), values.offset, self._row_values)
        return locations

    def _mapped_file(self, root: pa.Buffer, values: pa.Array, first: int, files: list[str]) -> str | None:
        """The cache file that `root` maps, recognised by its size and confirmed by the bytes of
        the first values at their offset (one page of the mapping is read, once per file)."""
        sample = values.slice(0, min(len(values), 64)).to_numpy(zero_copy_only=True).tobytes()
        for path in files:
            if os.path.getsize(path) != root.size:
                continue
            with open(path, "rb") as handle:
                handle.seek(first - root.address)
                if handle.read(len(sample)) == sample:
                    return path
        return None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:
        # File descriptors do not survive pickling (DataLoader workers): reopen lazily.
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def _fd(self, path: str) -> int:
        if self._pid != os.getpid():  # forked worker: descriptors are shared with the parent, open our own
            self._fds, self._pid = {}, os.getpid()
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def close(self) -> None:
        """Release the file descriptors (they are reopened on the next read)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            self.close()

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` as one (n, R, D) float16 array, in the order given."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)}), got [{indices.min()}, {indices.max()}]")
        out = np.empty((len(indices), self.num_regions, self.feature_dim), dtype=self._dtype)
        sources, offsets = self._source[indices], self._offset[indices]
        for source_id in np.unique(sources):
            positions = np.flatnonzero(sources == source_id)
            source = self._sources[source_id]
            if isinstance(source, str):
                self._read_rows(source, offsets[positions], out, positions)
            else:
                for position, start in zip(positions.tolist(), offsets[positions].tolist()):
                    out[position] = source[start:start + self._row_values].reshape(self.num_regions, self.feature_dim)
        return out if out.dtype == np.float16 else out.astype(np.float16)

    def _read_rows(self, path: str, offsets: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        fd = self._fd(path)
        for position, offset in zip(positions.tolist(), offsets.tolist()):
            target = memoryview(out[position]).cast("B")
            done = 0
            while done < self._row_bytes:
                count = os.preadv(fd, [target[done:]], offset + done)
                if count <= 0:
                    raise OSError(f"short read from {path} at byte {offset + done}: the file is truncated")
                done += count

    def iter_batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, indices: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One pass over ``indices`` (default: all rows) as (features (n, R, D) float16, labels (n,)) batches.

        The last batch may be shorter; class-balanced fixed-size batches come from
        :func:`modeling_scegg.data.sampling.class_balanced_batches` together with :meth:`take`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.arange(len(self), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        if shuffle:
            order = np.random.default_rng(seed).permutation(order)
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            yield self.take(batch), self.labels[batch]
