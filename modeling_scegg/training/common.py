"""What the stage trainers share: the run context, the resumable step loop, sharded inference.

A run has one `Accelerator`. Each stage prepares on it only the networks it trains and, when it
ends, hands it back as it found it (`release_stage_memory`: the networks' own forward back,
Accelerate's references to them dropped, a fresh loss scale), so `save_state` in stage 3 saves
only stage 3's networks and a checkpoint never depends on how stage 1 was prepared.
Randomness comes from per-stage, per-process streams (`StageState`) that are checkpointed, which
is what makes a resumed run end with the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import get_grad_scaler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..modeling_scegg import SCEGGModel, adam
from .arguments import SCEGGTrainingArguments
from .checkpointing import CheckpointManager, StageState

logger = get_logger(__name__)

_STAGE_OFFSETS = {"stage1": 1, "stage2": 2, "stage3": 3, "classifiers": 4}


@dataclass
class RunContext:
    """Shared state of one pipeline run. `accelerator` is the run's one Accelerator: it logs to
    the trackers (TensorBoard), owns the process group that barriers use, says which process is
    the main one, and prepares what each stage trains (released at the stage's end). `history`
    is the run's loss history, which its snapshots record."""

    args: SCEGGTrainingArguments
    model: SCEGGModel
    accelerator: Accelerator
    checkpoints: CheckpointManager
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def stage_state(self, stage: str, per_process: bool = True) -> StageState:
        """A random stream per (run seed, stage[, process]): with `per_process` ranks draw
        different batches; without, they share one stream (to agree on a shuffle)."""
        seed = self.args.seed * 1_000 + _STAGE_OFFSETS[stage] * 100
        return StageState(seed=seed + self.accelerator.process_index if per_process else seed)

    def log(self, stage: str, values: dict[str, float], step: int) -> None:
        self.accelerator.log({f"{stage}/{k}": v for k, v in values.items()}, step=step)


def run_steps(
    ctx: RunContext,
    stage: str,
    num_steps: int,
    state: StageState,
    step_fn: Callable[[StageState], dict[str, float | torch.Tensor]],
) -> dict[str, list[tuple[int, float]]]:
    """Run `step_fn` until `num_steps`, checkpointing every `checkpoint_every` steps and
    continuing from the newest checkpoint with `--resume`. Returns the stage's loss history."""
    accelerator = ctx.accelerator
    if ctx.args.resume and (folder := ctx.checkpoints.latest_step(stage)) is not None:
        ctx.checkpoints.load_step(accelerator, folder, state)
        logger.info(f"{stage}: resumed at step {state.step} from {folder}", main_process_only=True)
    history = state.extra.setdefault("history", {})
    log_every = max(1, num_steps // 200)
    bar = tqdm(total=num_steps, initial=state.step, desc=stage, disable=not accelerator.is_local_main_process)
    while state.step < num_steps:
        values = step_fn(state)
        state.step += 1
        bar.update(1)
        if state.step % log_every == 0 or state.step == num_steps:
            values = {key: float(value) for key, value in values.items()}  # the only host sync of a step's logs
            for key, value in values.items():
                history.setdefault(f"{stage}/{key}", []).append((state.step, float(value)))
            ctx.log(stage, values, state.step)
            bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
        if state.step % ctx.args.checkpoint_every == 0 and state.step < num_steps:
            ctx.checkpoints.save_step(accelerator, stage, state)
    bar.close()
    ctx.history.update({k: [tuple(p) for p in v] for k, v in history.items()})
    return history


def scen_optimizer(kind: str, params, lr: float) -> torch.optim.Optimizer:
    """The optimizer of stages 1 and 2: the published RMSprop (momentum 0.9, weight decay 1e-4;
    multi-tensor, as RMSprop has no fused form) or the paper's Adam (Sec. 4)."""
    if kind == "adam":
        return adam(params, lr)
    return torch.optim.RMSprop(params, lr=lr, momentum=0.9, weight_decay=1e-4, foreach=True)


def optimizer_step(accelerator: Accelerator | None, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
    """Backward (through Accelerate, for loss scaling and DDP, unless the networks are local
    copies that no Accelerator prepared), step, clear; returns the detached loss, which stays on
    the device until `run_steps` logs it (no host sync per step)."""
    if accelerator is None:
        loss.backward()
    else:
        accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()


def sharded_map(
    accelerator: Accelerator,
    num_items: int,
    batch_size: int,
    compute: Callable[[torch.Tensor], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Apply `compute(indices)` to every item once, split across processes, and gather the
    results on every process in item order (`gather_for_metrics` drops the padding that makes
    the shards even, so each item is counted exactly once)."""
    loader = accelerator.prepare(DataLoader(torch.arange(num_items), batch_size=batch_size))
    parts: dict[str, list[torch.Tensor]] = {}
    for indices in loader:
        out = compute(indices)
        out["index"] = indices
        gathered = accelerator.gather_for_metrics(out)
        for key, value in gathered.items():
            parts.setdefault(key, []).append(value.cpu())
    merged = {key: torch.cat(values) for key, values in parts.items()}
    order = torch.argsort(merged.pop("index"))
    if len(order) != num_items:
        raise RuntimeError(f"sharded evaluation returned {len(order)} items for {num_items}")
    return {key: value[order] for key, value in merged.items()}


def restore_forward(accelerator: Accelerator, *prepared: torch.nn.Module) -> None:
    """Give networks prepared by a stage their own forward back. Accelerate wraps a prepared
    network's forward in its autocast (bf16 where that is the run's mixed precision); left on the
    model, the wrapper would make later stages and the evaluation compute in another precision
    than the same networks loaded from a snapshot or a saved model, so a resumed run would not
    match an uninterrupted one and results.json would not be what the saved model predicts."""
    for module in prepared:
        accelerator.unwrap_model(module, keep_fp32_wrapper=False)


def release_stage_memory(accelerator: Accelerator, *prepared: torch.nn.Module) -> None:
    """End a stage: its `prepared` networks get their own forward back (`restore_forward`) and
    drop their gradients; the run's accelerator forgets what the stage prepared (so the next
    stage's `save_state` holds only its own networks) and starts the next stage at a fresh fp16
    loss scale, as a resumed stage does; and what the stage allocated goes back to the system:
    cycles, and the freed heap pages that glibc keeps (after stage 3 at 7 x 7 x 512, ~300 MB of
    optimizer state would otherwise stay resident into the classifier stage; at 14 x 14 x 2048
    the EGGN's gradients are another 300 MB)."""
    restore_forward(accelerator, *prepared)
    for module in prepared:
        module.zero_grad(set_to_none=True)
    accelerator.free_memory()
    if accelerator.scaler is not None:
        handler = accelerator.scaler_handler
        fresh = get_grad_scaler(accelerator.distributed_type, **(handler.to_kwargs() if handler else {}))
        accelerator.scaler.load_state_dict(fresh.state_dict())
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Return the heap's free pages to the system (glibc's malloc_trim; nothing elsewhere).
    Batches of tens of MB that come and go leave glibc's heap fragmented and growing: over the
    caching pass at 14 x 14 x 2048 it grew by ~0.9 GB without this."""
    malloc_trim = _malloc_trim()
    if malloc_trim is not None:
        malloc_trim(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, looked up once (the caching pass calls it after every batch)."""
    libc = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None


def silence_noisy_loggers() -> None:
    """Keep the progress bars readable: datasets and transformers chatter at INFO level."""
    for name in ("datasets", "transformers.modeling_utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
