"""The after-stage snapshot of a run: the whole model, the feature cache and the progress record,
enough for `--resume` to continue at the next stage exactly as an uninterrupted run would.

The snapshot is a resumable state, not a model folder to share (`save_weights_and_code`); the
cache goes to `cache.safetensors` (never a pickle) and the progress record to `progress.json`.
`CheckpointManager.finish_stage` writes it atomically.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from ..modeling_scegg import SCEGGModel
from .state import FeatureCache, Progress

CACHE_FILE, PROGRESS_FILE = "cache.safetensors", "progress.json"


def snapshot_writer(model: SCEGGModel, cache: FeatureCache | None, progress: Progress) -> Callable[[Path], None]:
    """What `CheckpointManager.finish_stage` calls with its temporary folder."""
    def write(folder: Path) -> None:
        model.save_weights_and_code(folder)
        save_file(cache.to_tensors() if cache else {}, str(folder / CACHE_FILE))
        (folder / PROGRESS_FILE).write_text(json.dumps(progress.to_json()))

    return write


def read_snapshot(folder: Path, device: torch.device) -> tuple[SCEGGModel, FeatureCache, Progress]:
    model = SCEGGModel.from_pretrained(folder).to(device)
    cache = FeatureCache.from_tensors(load_file(str(folder / CACHE_FILE)))
    return model, cache, Progress.from_json(json.loads((folder / PROGRESS_FILE).read_text()))
