"""Stage 1: train the SCEN (LEN + SC + CLS_g) with L_S1 (Eq. 16) on class-balanced batches of
region features, then cache the dense features g and local scores p_l of every image once.

The stage is a small state object (`Stage1Run`) and one module-level step over it, so a
benchmark or a test can run single steps of exactly what training runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from ..data.sampling import ClassBalancedSampler
from ..data.store import RegionFeatureReader
from ..modeling_scegg import SCEGGModel, stage1_loss_eq16
from .checkpointing import StageState
from .common import (
    RunContext,
    optimizer_step,
    release_stage_memory,
    run_steps,
    scen_optimizer,
    sharded_map,
    trim_heap,
)
from .state import SplitFeatures


class Stage1Network(nn.Module):
    """The parts of the SCEN that stage 1 trains, as one module so DDP synchronises exactly them.

    Networks that an ablation switches off are frozen here: DDP expects a gradient for every
    trainable parameter of a prepared module."""

    def __init__(self, model: SCEGGModel):
        super().__init__()
        scen = model.scen
        self.local_embedding = scen.local_embedding
        self.compression = scen.compression
        self.global_classifier = scen.global_classifier
        self.register_buffer("class_attributes", model.class_attributes.clone(), persistent=False)
        config = model.config
        if not config.lambda_l:
            scen.local_embedding.embedding_weight.requires_grad_(False)
        if not config.lambda_g:
            self.compression.requires_grad_(False)
            self.global_classifier.requires_grad_(False)

    def forward(self, region_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p_l (Eq. 3) and p_g = CLS_g(SC(h)) (Eq. 5), through the forms that never build h."""
        regions, attention, local_scores = self.local_embedding.attend(region_features, self.class_attributes)
        return local_scores, self.global_classifier(self.compression.compress_attended(attention, regions))


@dataclass
class Stage1Run:
    """Everything one stage-1 step needs; the network and optimizer are the prepared ones."""

    accelerator: Accelerator
    network: nn.Module
    optimizer: torch.optim.Optimizer
    reader: RegionFeatureReader
    sampler: ClassBalancedSampler
    labels: torch.Tensor
    class_ids: torch.Tensor | None
    batch_size: int
    lambda_l: float
    lambda_g: float


def prepare_stage1(ctx: RunContext, reader: RegionFeatureReader) -> Stage1Run:
    """The stage's network and optimizer, prepared on the run's accelerator."""
    accelerator = ctx.accelerator
    model, config = ctx.model, ctx.model.config
    network = Stage1Network(model)
    optimizer = scen_optimizer(ctx.args.stage1_optimizer, [p for p in network.parameters() if p.requires_grad],
                               ctx.args.stage1_lr)
    network, optimizer = accelerator.prepare(network, optimizer)
    class_ids = model.seen_class_ids.to(accelerator.device) if config.stage1_classes == "seen" else None
    return Stage1Run(accelerator=accelerator, network=network, optimizer=optimizer, reader=reader,
                     sampler=ClassBalancedSampler(reader.labels), labels=torch.from_numpy(reader.labels),
                     class_ids=class_ids, batch_size=ctx.args.batch_size, lambda_l=config.lambda_l,
                     lambda_g=config.lambda_g)


def stage1_step(run: Stage1Run, state: StageState) -> dict[str, torch.Tensor]:
    """One L_S1 step on a fresh class-balanced batch; returns the (detached) loss."""
    device = run.accelerator.device
    indices = run.sampler.sample(run.batch_size, state.numpy_rng)
    regions = torch.from_numpy(run.reader.take(indices)).to(device, non_blocking=True).float()
    targets = run.labels[indices].to(device, non_blocking=True)
    with run.accelerator.autocast():
        local_scores, global_scores = run.network(regions)
    loss = stage1_loss_eq16(local_scores.float(), global_scores.float(), targets, run.lambda_l, run.lambda_g,
                            run.class_ids)
    return {"loss": optimizer_step(run.accelerator, run.optimizer, loss)}


def train_stage1(ctx: RunContext, reader: RegionFeatureReader) -> None:
    """Train the SCEN for `stage1_iters` iterations (resumable)."""
    # the networks stay in the model; the stage's optimizer state goes with _stage1_steps' locals
    release_stage_memory(ctx.accelerator, _stage1_steps(ctx, reader))


def _stage1_steps(ctx: RunContext, reader: RegionFeatureReader) -> nn.Module:
    run = prepare_stage1(ctx, reader)
    state = ctx.stage_state("stage1")
    run_steps(ctx, "stage1", ctx.args.stage1_iters, state, lambda s: stage1_step(run, s))
    return run.network


@torch.no_grad()
def compute_dense_features(ctx: RunContext, reader: RegionFeatureReader, with_local_scores: bool) -> SplitFeatures:
    """Unscaled g (and p_l) of every image of a split, computed once with the frozen SCEN and
    shared by all processes; stages 2 and 3 never read region features again."""
    accelerator = ctx.accelerator
    model = ctx.model.eval()

    def compute(indices: torch.Tensor) -> dict[str, torch.Tensor]:
        regions = torch.from_numpy(reader.take(indices.cpu().numpy())).to(accelerator.device).float()
        with accelerator.autocast():
            raw = model.raw_dense_features(model.check_region_features(regions))
        out = {"features": raw["features"].float()}
        if with_local_scores and raw["local_scores"] is not None:
            out["local_scores"] = raw["local_scores"].float()
        del regions, raw
        trim_heap()  # each batch is tens of MB at CUB size: keep the heap from growing over the pass
        return out

    result = sharded_map(accelerator, len(reader), reader.batch_rows(ctx.args.eval_batch_size), compute)
    return SplitFeatures(features=result["features"], local_scores=result.get("local_scores"),
                         labels=torch.from_numpy(np.asarray(reader.labels, dtype=np.int64)))
