"""Resumable checkpoints that a kill can never corrupt.

Within a stage, `Accelerator.save_state` stores the prepared networks (safetensors), optimizers
and global RNG states; our own per-process random streams and counters go beside them as JSON and
safetensors (nothing here is unpickled beyond what Accelerate loads with `weights_only=True`).
Each checkpoint is written into a temporary folder and renamed into place, so a folder that
exists is complete. After a stage finishes, a snapshot of the whole model plus the feature cache
is kept instead, and the stage's step checkpoints are dropped.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

STAGES = ("stage1", "stage2", "stage3", "classifiers")


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
            write_snapshot(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            shutil.rmtree(self.stage_dir(stage), ignore_errors=True)
            for earlier in STAGES[: STAGES.index(stage)]:
                shutil.rmtree(self.snapshot_dir(earlier), ignore_errors=True)
        accelerator.wait_for_everyone()
