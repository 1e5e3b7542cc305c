"""Stage 2: with the SCEN frozen, train the global head CLS_g on cached g so that its scores
reproduce the local scores p_l (L_SCR, Eq. 8 / 17). This head then guides stage 3."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.sampling import ClassBalancedSampler
from ..modeling_scegg import global_embedding_cross_entropy_eq7, semantic_consistent_regression_loss_eq8
from .common import RunContext, optimizer_step, run_steps, scen_optimizer


def train_stage2(ctx: RunContext, train_cache: dict[str, torch.Tensor]) -> None:
    """`train_cache` holds scaled `features` (N, D), `local_scores` (N, C) and `labels` (N,)."""
    accelerator = ctx.make_accelerator()
    model, config = ctx.model, ctx.model.config
    head = model.scen.regression_head.train()
    optimizer = scen_optimizer(ctx.args.stage2_optimizer, head.parameters(), ctx.args.stage2_lr)
    head, optimizer = accelerator.prepare(head, optimizer)
    features = train_cache["features"].to(accelerator.device)
    targets = train_cache["local_scores"].to(accelerator.device)
    sampler = ClassBalancedSampler(train_cache["labels"].numpy())
    labels = train_cache["labels"].to(accelerator.device)
    seen = model.seen_class_ids.to(accelerator.device)
    state = ctx.stage_state("stage2", accelerator)

    def step(state) -> dict[str, float]:
        indices = torch.from_numpy(sampler.sample(ctx.args.batch_size, state.numpy_rng))
        indices = indices.to(accelerator.device)
        scores = head(features[indices])
        if config.stage2_objective == "regression":
            loss = semantic_consistent_regression_loss_eq8(scores, targets[indices], config.regression_loss)
        else:
            loss = global_embedding_cross_entropy_eq7(scores, labels[indices], seen)
        return {"loss": optimizer_step(accelerator, optimizer, loss)}

    run_steps(ctx, accelerator, "stage2", ctx.args.stage2_iters, state, step)
    accelerator.free_memory()


@torch.no_grad()
def regression_fidelity(ctx: RunContext, train_cache: dict[str, torch.Tensor]) -> dict[str, float]:
    """How well CLS_g(g) reproduces p_l on the training images: agreement of the top class among
    the seen classes, and the MSE. Printed so a failed stage 2 is visible before stage 3."""
    model = ctx.model
    device = model.class_attributes.device
    scores = model.scen.regression_head(train_cache["features"].to(device))
    targets = train_cache["local_scores"].to(device)
    seen = model.seen_class_ids.to(device)
    agree = (scores[:, seen].argmax(-1) == targets[:, seen].argmax(-1)).float().mean()
    return {"top1_agreement": agree.item(), "mse": F.mse_loss(scores, targets).item()}
