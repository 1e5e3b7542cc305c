"""Stage 2: with the SCEN frozen, train the global head CLS_g on cached g so that its scores
reproduce the local scores p_l (L_SCR, Eq. 8 / 17). This head then guides stage 3."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from ..data.sampling import ClassBalancedSampler
from ..modeling_scegg import global_embedding_cross_entropy_eq7, stage2_loss_eq17
from .checkpointing import StageState
from .common import (
    RunContext,
    optimizer_step,
    release_stage_memory,
    run_steps,
    scen_optimizer,
)
from .state import SplitFeatures


@dataclass
class Stage2Run:
    """Everything one stage-2 step needs: the prepared head and optimizer and the cached g, p_l."""

    accelerator: Accelerator
    head: torch.nn.Module
    optimizer: torch.optim.Optimizer
    features: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    sampler: ClassBalancedSampler
    seen: torch.Tensor
    batch_size: int
    objective: str
    regression_loss: str


def prepare_stage2(ctx: RunContext, train: SplitFeatures) -> Stage2Run:
    """The head and its optimizer prepared on the run's accelerator; `train` holds scaled
    features (N, D), local scores (N, C) and labels (N,)."""
    accelerator = ctx.accelerator
    model, config = ctx.model, ctx.model.config
    head = model.scen.regression_head.train()
    optimizer = scen_optimizer(ctx.args.stage2_optimizer, head.parameters(), ctx.args.stage2_lr)
    head, optimizer = accelerator.prepare(head, optimizer)
    device = accelerator.device
    return Stage2Run(accelerator=accelerator, head=head, optimizer=optimizer, features=train.features.to(device),
                     targets=train.local_scores.to(device), labels=train.labels.to(device),
                     sampler=ClassBalancedSampler(train.labels.numpy()), seen=model.seen_class_ids.to(device),
                     batch_size=ctx.args.batch_size, objective=config.stage2_objective,
                     regression_loss=config.regression_loss)


def stage2_step(run: Stage2Run, state: StageState) -> dict[str, torch.Tensor]:
    """One L_SCR step (or the cross-entropy of the "w/o L_SCR" ablation) on a balanced batch."""
    indices = torch.from_numpy(run.sampler.sample(run.batch_size, state.numpy_rng)).to(run.accelerator.device)
    scores = run.head(run.features[indices])
    if run.objective == "regression":
        loss = stage2_loss_eq17(scores, run.targets[indices], run.regression_loss)
    else:
        loss = global_embedding_cross_entropy_eq7(scores, run.labels[indices], run.seen)
    return {"loss": optimizer_step(run.accelerator, run.optimizer, loss)}


def train_stage2(ctx: RunContext, train: SplitFeatures) -> None:
    """Train the regression head for `stage2_iters` iterations (resumable)."""
    # the head stays in the model; the stage's optimizer state goes with _stage2_steps' locals
    release_stage_memory(ctx.accelerator, _stage2_steps(ctx, train))


def _stage2_steps(ctx: RunContext, train: SplitFeatures) -> nn.Module:
    run = prepare_stage2(ctx, train)
    state = ctx.stage_state("stage2")
    run_steps(ctx, "stage2", ctx.args.stage2_iters, state, lambda s: stage2_step(run, s))
    return run.head


@torch.no_grad()
def regression_fidelity(ctx: RunContext, train: SplitFeatures) -> dict[str, float]:
    """How well CLS_g(g) reproduces p_l on the training images: agreement of the top class among
    the seen classes, and the MSE. Printed so a failed stage 2 is visible before stage 3."""
    model = ctx.model
    device = model.class_attributes.device
    scores = model.scen.regression_head(train.features.to(device))
    targets = train.local_scores.to(device)
    seen = model.seen_class_ids.to(device)
    agree = (scores[:, seen].argmax(-1) == targets[:, seen].argmax(-1)).float().mean()
    return {"top1_agreement": agree.item(), "mse": F.mse_loss(scores, targets).item()}
