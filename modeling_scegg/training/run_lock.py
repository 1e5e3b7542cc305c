"""One run per output folder, and a resumed run that is the run it resumes.

Two guards keep runs from mixing in an output folder:

* **A lock held for the whole run** (``output_dir/.scegg-run.lock``, a ``filelock`` OS lock, so a
  killed run never leaves it stuck): a second run started into the folder is refused at once,
  whatever ``--checkpoint_every`` is, instead of both writing and one being silently lost.
* **The run's identity** (``output_dir/checkpoints/run.json``), written when a run starts: the
  data (dataset, class lists, split sizes, region and attribute sizes, a fingerprint of the class
  semantics, the labels and sampled region features) and every argument that shapes the model
  and the schedule. ``--resume true`` compares it with the run it would continue and refuses,
  naming the first difference, so a resumed run can never keep an old model while recording new
  arguments. The arguments in :data:`RESUMABLE_ARGUMENTS` may change on resume: where the data
  and the outputs live, logging, plots, checkpoint frequency and pushing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from accelerate import PartialState
from filelock import FileLock, Timeout

from ..atomic import atomic_write_text

LOCK_FILE_NAME = ".scegg-run.lock"
IDENTITY_FILE_NAME = "run.json"
# Arguments that change neither the data, the model nor the schedule: a resumed run may change them.
RESUMABLE_ARGUMENTS = frozenset({"output_dir", "resume", "data_dir", "cache_dir", "log_with", "plots",
                                 "checkpoint_every", "push_to_hub", "hub_model_id", "hub_private"})
_SAMPLED_ROWS = 3  # region features of the first, middle and last image of each split enter the fingerprint


class RunInProgressError(RuntimeError):
    """Another run holds the output folder."""


class ResumeMismatchError(ValueError):
    """``--resume`` was asked to continue a run made with other data or other settings."""


def hold_run_lock(output_dir: str | Path) -> FileLock:
    """Take the output folder's lock for this run (the main process only), or refuse at once."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    # one lock object per folder and process (is_singleton): a run that died in this process (a
    # notebook) never blocks the next one here, while any other process is refused
    lock = FileLock(str(Path(output_dir).resolve() / LOCK_FILE_NAME), is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout as error:
        raise RunInProgressError(
            f"another scegg run is writing into {output_dir} (it holds {lock.lock_file}); wait for it to finish "
            f"or choose another --output_dir") from error
    return lock


@contextmanager
def run_locked(output_dir: str | Path) -> Iterator[None]:
    """Hold the output folder's lock (main process) for a block spanning several runs into it, e.g.
    the validation view's run and the real one: :func:`hold_run_lock` inside is re-entrant."""
    lock = hold_run_lock(output_dir) if PartialState().is_main_process else None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def data_fingerprint(data) -> str:
    """sha256 over the class semantics, every split's labels and a few of its region features: the
    same data gives the same fingerprint wherever it is cached."""
    digest = hashlib.sha256()
    semantics = data.semantics
    for array in (semantics.attributes, semantics.word_vectors):
        if array is not None:
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    for name in sorted(data.splits):
        split = data.splits[name]
        digest.update(name.encode())
        digest.update(np.asarray(split.with_format("numpy")["label"], dtype=np.int64).tobytes())
        rows = sorted({0, len(split) // 2, len(split) - 1}) if len(split) else []
        sampled = split.select(rows[:_SAMPLED_ROWS]).with_format("numpy")["region_features"] if rows else []
        digest.update(np.ascontiguousarray(sampled, dtype=np.float32).tobytes())
    return digest.hexdigest()


def run_identity(args, data) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (see the module docstring)."""
    semantics = data.semantics
    identity = {
        "data": {"dataset": data.name, "class_names": list(semantics.class_names),
                 "seen_class_ids": semantics.seen_class_ids, "unseen_class_ids": semantics.unseen_class_ids,
                 "split_sizes": {name: len(split) for name, split in sorted(data.splits.items())},
                 "num_regions": data.num_regions, "feature_dim": data.feature_dim,
                 "num_attributes": semantics.num_attributes, "fingerprint": data_fingerprint(data)},
        "arguments": {k: v for k, v in dataclasses.asdict(args).items() if k not in RESUMABLE_ARGUMENTS},
        "model": args.model_config_overrides(),
    }
    return json.loads(json.dumps(identity, default=_jsonable))  # as it reads back from run.json


def _jsonable(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else str(value)


def check_run_identity(checkpoints_root: Path, identity: dict[str, Any], resume: bool, write: bool) -> None:
    """A resumed run must match the identity its checkpoints were made with; a fresh run (or a
    resumed one with nothing to resume) records its own (`write`: the main process)."""
    path = checkpoints_root / IDENTITY_FILE_NAME
    if resume and path.is_file():
        difference = first_difference(json.loads(path.read_text(encoding="utf-8")), identity)
        if difference:
            raise ResumeMismatchError(
                f"--resume true would continue the run in {checkpoints_root.parent} with other data or settings: "
                f"{difference}. Resume with the run's own data and arguments (only {', '.join(sorted(RESUMABLE_ARGUMENTS))} "
                f"may change), or start a fresh run in another --output_dir")
        return
    if write:
        checkpoints_root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(identity, indent=1))


def first_difference(old: Any, new: Any, where: str = "") -> str | None:
    """'where: old value in the snapshot, new value now' for the first differing entry, else None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = first_difference(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    if old == new:
        return None
    return f"{where} was {_short(old)} when the run started, {_short(new)} now"


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["IDENTITY_FILE_NAME", "LOCK_FILE_NAME", "RESUMABLE_ARGUMENTS", "ResumeMismatchError", "RunInProgressError",
           "check_run_identity", "data_fingerprint", "first_difference", "hold_run_lock", "run_identity", "run_locked"]
