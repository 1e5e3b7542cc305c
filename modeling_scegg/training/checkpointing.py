"""Resumable checkpoints that a kill can never corrupt.

Within a stage, `Accelerator.save_state` stores the prepared networks (safetensors), optimizers
and global RNG states; our own per-process random streams and counters go beside them as JSON and
safetensors (nothing here is unpickled beyond what Accelerate loads with `weights_only=True`).
Each checkpoint is written into a temporary folder and renamed into place, so a folder that
exists is complete. After a stage finishes, a snapshot of the whole model plus the feature cache
is kept instead, and the stage's step checkpoints are dropped. A disk that fills up while a
checkpoint is written is reported as such (:class:`DiskFullError`), not as torch's
"basic_ios::clear: iostream error"; the unfinished checkpoint is removed and the last complete one
kept. The manager also holds the run's lock and checks its identity (:mod:`.run_lock`).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from .run_lock import check_run_identity, hold_run_lock

STAGES = ("stage1", "stage2", "stage3", "classifiers")
_WRITE_FAILURES = ("iostream error", "failed writing", "file write failed", "No space left")
_LOW_SPACE = 256 * 2**20  # below it, a write that failed without an errno is taken for a full disk


class DiskFullError(OSError):
    """The disk of the output folder filled up while a checkpoint was written."""


def _is_disk_full(error: BaseException, folder: Path) -> bool:
    """ENOSPC / EDQUOT anywhere in the chain, or torch's and safetensors' errno-less write
    failures when the disk is (nearly) full."""
    chain, seen = [], error
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for e in chain):
        return True
    if not any(text in str(e) for e in chain for text in _WRITE_FAILURES):
        return False
    return _free_bytes(folder) < _LOW_SPACE


def _free_bytes(path: Path) -> int:
    """Free space on the disk that holds `path` (or its nearest existing parent)."""
    return shutil.disk_usage(next((p for p in (path, *path.parents) if p.exists()), Path("/"))).free


@contextmanager
def _writing(tmp: Path) -> Iterator[None]:
    """Remove the unfinished checkpoint folder when writing fails, and say "disk full" as such."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        full = _is_disk_full(error, tmp)  # before the unfinished checkpoint is removed and frees its space
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise DiskFullError(
                errno.ENOSPC,
                f"the disk is full: writing the checkpoint {tmp.name.removesuffix('.tmp')} in {tmp.parent} failed "
                f"({_free_bytes(tmp) // 2**20} MB free). Free some space (or choose an --output_dir "
                f"on another disk) and rerun with --resume true: the last complete checkpoint is kept") from error
        raise


@dataclass
class StageState:
    """What a stage needs besides network and optimizer state to continue bit for bit."""

    seed: int
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    numpy_rng: np.random.Generator = field(init=False)
    torch_rng: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.numpy_rng = np.random.default_rng(self.seed)
        self.torch_rng = torch.Generator().manual_seed(self.seed)

    def save(self, folder: Path, rank: int) -> None:
        payload = {"seed": self.seed, "step": self.step, "extra": self.extra,
                   "numpy_rng": self.numpy_rng.bit_generator.state}
        (folder / f"stage_state_{rank}.json").write_text(json.dumps(payload))
        save_file({"torch_rng": self.torch_rng.get_state()}, str(folder / f"stage_rng_{rank}.safetensors"))

    def load(self, folder: Path, rank: int) -> None:
        payload = json.loads((folder / f"stage_state_{rank}.json").read_text())
        self.seed, self.step, self.extra = payload["seed"], payload["step"], payload["extra"]
        self.numpy_rng.bit_generator.state = payload["numpy_rng"]
        self.torch_rng.set_state(load_file(str(folder / f"stage_rng_{rank}.safetensors"))["torch_rng"])


class CheckpointManager:
    """Finds, writes and prunes the checkpoints of one run under `output_dir/checkpoints`."""

    def __init__(self, output_dir: str | os.PathLike):
        self.root = Path(output_dir) / "checkpoints"
        self.lock = None

    @contextmanager
    def held_for_the_run(self, is_main_process: bool) -> Iterator[None]:
        """Take the output folder's run lock (the main process) for the checks of the block: it
        is released when they fail, else held until :meth:`release` (the end of the run)."""
        self.lock = hold_run_lock(self.root.parent) if is_main_process else None
        try:
            yield
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def check_identity(self, identity: dict[str, Any], resume: bool, is_main_process: bool) -> None:
        """Refuse to resume a run made with other data or settings; record a fresh run's identity."""
        check_run_identity(self.root, identity, resume, write=is_main_process)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def snapshot_dir(self, stage: str) -> Path:
        return self.root / f"after_{stage}"

    def latest_step(self, stage: str) -> Path | None:
        """The newest complete step checkpoint of a stage (temporary folders are ignored)."""
        folder = self.stage_dir(stage)
        if not folder.is_dir():
            return None
        steps = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_") and p.suffix != ".tmp")
        return steps[-1] if steps else None

    def last_finished_stage(self) -> str | None:
        finished = [s for s in STAGES if self.snapshot_dir(s).is_dir()]
        return finished[-1] if finished else None

    def save_step(self, accelerator: Accelerator, stage: str, state: StageState) -> Path:
        """Write a step checkpoint atomically, then drop the older ones of the stage."""
        final = self.stage_dir(stage) / f"step_{state.step:09d}"
        tmp = final.with_name(final.name + ".tmp")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        with _writing(tmp):
            accelerator.save_state(str(tmp))
            state.save(tmp, accelerator.process_index)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            os.replace(tmp, final)
            for old in self.stage_dir(stage).iterdir():
                if old != final and old.name.startswith("step_"):
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load_step(self, accelerator: Accelerator, folder: Path, state: StageState) -> None:
        accelerator.load_state(str(folder))
        state.load(folder, accelerator.process_index)

    def finish_stage(self, accelerator: Accelerator, stage: str, write_snapshot) -> None:
        """Write the after-stage snapshot (via `write_snapshot(tmp_folder)` on the main process)
        atomically, then remove the stage's step checkpoints and the older snapshots: resuming
        only ever needs the newest."""
        final = self.snapshot_dir(stage)
        if accelerator.is_main_process:
            tmp = final.with_name(final.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            with _writing(tmp):
                write_snapshot(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            shutil.rmtree(self.stage_dir(stage), ignore_errors=True)
            for earlier in STAGES[: STAGES.index(stage)]:
                shutil.rmtree(self.snapshot_dir(earlier), ignore_errors=True)
        accelerator.wait_for_everyone()
