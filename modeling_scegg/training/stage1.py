"""Stage 1: train the SCEN (LEN + SC + CLS_g) with L_S1 (Eq. 16) on class-balanced batches of
region features, then cache the dense features g and local scores p_l of every image once."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.sampling import ClassBalancedSampler
from ..data.store import RegionFeatureReader
from ..modeling_scegg import SCEGGModel, stage1_loss_eq16
from .common import RunContext, optimizer_step, run_steps, scen_optimizer, sharded_map


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
        local, _, local_scores = self.local_embedding(region_features, self.class_attributes)
        return local_scores, self.global_classifier(self.compression(local))


def train_stage1(ctx: RunContext, reader: RegionFeatureReader) -> None:
    """Train the SCEN for `stage1_iters` iterations (resumable)."""
    accelerator = ctx.make_accelerator()
    model, config = ctx.model, ctx.model.config
    network = Stage1Network(model)
    optimizer = scen_optimizer(ctx.args.stage1_optimizer, [p for p in network.parameters() if p.requires_grad],
                               ctx.args.stage1_lr)
    network, optimizer = accelerator.prepare(network, optimizer)
    labels = reader.labels
    class_ids = model.seen_class_ids.to(accelerator.device) if config.stage1_classes == "seen" else None
    state = ctx.stage_state("stage1", accelerator)
    sampler = ClassBalancedSampler(labels)

    def step(state) -> dict[str, float]:
        indices = sampler.sample(ctx.args.batch_size, state.numpy_rng)
        regions = torch.from_numpy(reader.take(indices)).to(accelerator.device, torch.float32)
        targets = torch.from_numpy(labels[indices]).to(accelerator.device)
        with accelerator.autocast():
            local_scores, global_scores = network(regions)
        loss = stage1_loss_eq16(local_scores.float(), global_scores.float(), targets,
                                config.lambda_l, config.lambda_g, class_ids)
        return {"loss": optimizer_step(accelerator, optimizer, loss)}

    run_steps(ctx, accelerator, "stage1", ctx.args.stage1_iters, state, step)
    accelerator.free_memory()


@torch.no_grad()
def compute_dense_features(ctx: RunContext, reader: RegionFeatureReader, with_local_scores: bool) -> dict[str, torch.Tensor]:
    """Unscaled g (and p_l) of every image of a split, computed once with the frozen SCEN and
    shared by all processes; stages 2 and 3 never read region features again."""
    accelerator = ctx.make_accelerator()
    model = ctx.model.eval()

    def compute(indices: torch.Tensor) -> dict[str, torch.Tensor]:
        regions = torch.from_numpy(reader.take(indices.cpu().numpy())).to(accelerator.device, torch.float32)
        with accelerator.autocast():
            raw = model.raw_dense_features(model.check_region_features(regions))
        out = {"features": raw["features"].float()}
        if with_local_scores and raw["local_scores"] is not None:
            out["local_scores"] = raw["local_scores"].float()
        return out

    result = sharded_map(accelerator, len(reader), ctx.args.eval_batch_size, compute)
    result["labels"] = torch.from_numpy(np.asarray(reader.labels, dtype=np.int64))
    return result
