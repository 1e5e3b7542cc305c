"""Stage 3: train the EGGN (TF-VAEGAN) on the cached dense features, guided by the frozen CLS_g
through L_EGS (Eq. 13-15); the generator-side objective is L_S3 (Eq. 18).

TF-VAEGAN's epoch visits its ceil(N / B) batch positions twice: once without feedback and once
with the feedback module F correcting the generator (weight a1). One *pass* is one batch
position of one of those two loops: `critic_iters` critic steps (each on a fresh class-balanced
batch, each also updating the attribute decoder on real features), the adaptive
gradient-penalty update, and one generator step. With `--stage3_pass_order epoch` (the
published code) an epoch runs all its passes without feedback, then all of them with feedback;
`batch` alternates the two at every batch position.

The step functions below are module-level and read everything from a `Stage3State`; they call
the networks only through their prepared (possibly DDP-wrapped) copies, or DDP would silently
skip gradient synchronisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from ..configuration_scegg import SCEGGConfig
from ..data.sampling import ClassBalancedSampler
from ..modeling_scegg import (
    TFVAEGAN_BETAS,
    adapt_gradient_penalty_weight,
    attribute_reconstruction_loss_eq12,
    embedding_guided_synthesis_loss_eq13,
    generate_features,
    generator_adversarial_loss_eq11,
    gradient_penalty_eq11,
    reparameterize,
    stage3_loss_eq18,
    tfvaegan_loss_eq9,
    tfvaegan_vae_loss_eq10,
    wgan_critic_loss_eq11,
)
from .checkpointing import StageState
from .common import RunContext, adam, release_stage_memory, run_steps
from .state import Scores, SplitFeatures

NETWORKS = ("encoder", "generator", "critic", "decoder", "feedback")


@dataclass
class Stage3State:
    """Everything a stage-3 step reads: prepared networks and optimizers (keyed by `NETWORKS`),
    the frozen guide CLS_g, the cached training data and the stage's random streams."""

    accelerator: Accelerator
    config: SCEGGConfig
    nets: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    guide: nn.Module
    features: torch.Tensor
    labels: torch.Tensor
    class_attributes: torch.Tensor
    unseen_class_ids: torch.Tensor
    sampler: ClassBalancedSampler
    batch_size: int
    critic_iters: int
    stream: StageState


def steps_per_epoch(num_train: int, batch_size: int, num_processes: int) -> int:
    """Batch positions per epoch so that one epoch covers the training set once globally."""
    return max(1, math.ceil(num_train / (batch_size * num_processes)))


def pass_uses_feedback(step: int, positions: int, order: str) -> bool:
    """Whether pass `step` (0-based, counted over the whole stage) is a feedback pass: the second
    half of every epoch in the published order, every second pass in the alternating one."""
    if order == "epoch":
        return (step % (2 * positions)) >= positions
    return step % 2 == 1


def learning_rates(ctx: RunContext) -> dict[str, float]:
    """TF-VAEGAN trains each network at its own rate: E (`encoder_lr`), G and D (`stage3_lr`),
    Dec (`decoder_lr`, the published dec_lr) and F (`feedback_lr`, the published feed_lr)."""
    args = ctx.args
    lr = args.stage3_lr
    return {"encoder": args.encoder_lr or lr, "generator": lr, "critic": lr,
            "decoder": args.decoder_lr, "feedback": args.feedback_lr or lr}


def _prepare(ctx: RunContext, accelerator: Accelerator) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
    """Adam for every network: default betas for E, TF-VAEGAN's (0.5, 0.999) for the others."""
    eggn, rates = ctx.model.eggn, learning_rates(ctx)
    modules = [getattr(eggn, name) for name in NETWORKS]
    optimizers = [adam(module.parameters(), rates[name], **({} if name == "encoder" else {"betas": TFVAEGAN_BETAS}))
                  for name, module in zip(NETWORKS, modules)]
    prepared = accelerator.prepare(*modules, *optimizers)
    count = len(NETWORKS)
    return dict(zip(NETWORKS, prepared[:count])), dict(zip(NETWORKS, prepared[count:]))


def draw_batch(s: Stage3State) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A class-balanced batch of cached features g, their class attributes a and labels y."""
    indices = torch.from_numpy(s.sampler.sample(s.batch_size, s.stream.numpy_rng)).to(s.features.device)
    labels = s.labels[indices]
    return s.features[indices], s.class_attributes[labels], labels


def generate(s: Stage3State, latent: torch.Tensor, attributes: torch.Tensor, feedback_weight: float) -> torch.Tensor:
    """G(z, a), corrected by F(Dec_hidden(.)) when the feedback weight is non-zero."""
    nets = s.nets
    return generate_features(nets["generator"], nets["decoder"], nets["feedback"], latent, attributes, feedback_weight)


def reconstruct(
    s: Stage3State, features: torch.Tensor, attributes: torch.Tensor, feedback_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VAE reconstruction G(mu + sigma * eps, a) of real features, with (mu, log sigma^2)."""
    mean, log_var = s.nets["encoder"](features, attributes)
    latent = reparameterize(mean, log_var, s.stream.torch_rng)
    return generate(s, latent, attributes, feedback_weight), mean, log_var


def prior_fakes(s: Stage3State, attributes: torch.Tensor, feedback_weight: float) -> torch.Tensor:
    """G(eps, a) with eps ~ N(0, I): synthetic features that no real image was encoded for."""
    latent = torch.randn(len(attributes), s.config.resolved_latent_dim, generator=s.stream.torch_rng)
    return generate(s, latent.to(attributes.device), attributes, feedback_weight)


def critic_step(s: Stage3State, feedback_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One critic step: Dec learns L_Rec (Eq. 12) on real features, then D the WGAN-GP loss of
    Eq. 11 against VAE reconstructions. Returns the critic loss and the unweighted penalty."""
    config, nets, optimizers = s.config, s.nets, s.optimizers
    x, a, _ = draw_batch(s)
    optimizers["decoder"].zero_grad()
    predicted, _ = nets["decoder"](x)
    s.accelerator.backward(config.lambda_r * attribute_reconstruction_loss_eq12(predicted, a, config.decoder_loss))
    optimizers["decoder"].step()
    optimizers["critic"].zero_grad()
    with torch.no_grad():
        fake, _, _ = reconstruct(s, x, a, feedback_weight)
    penalty = gradient_penalty_eq11(nets["critic"], x, fake, a, s.stream.torch_rng)
    real_scores, fake_scores = nets["critic"](torch.cat([x, fake]), torch.cat([a, a])).chunk(2)  # one product of 2B rows
    wasserstein = wgan_critic_loss_eq11(real_scores, fake_scores, config.gamma_d)
    loss = wasserstein + config.gamma_d * s.stream.extra["gp_lambda"] * penalty
    s.accelerator.backward(loss)
    optimizers["critic"].step()
    return loss.detach(), penalty.detach()


def frozen_call(s: Stage3State, name: str, *inputs: torch.Tensor) -> torch.Tensor:
    """Network `name` as a fixed function of its inputs: gradients reach the inputs, never its
    weights. The generator step needs the critic only this way (the published code freezes D
    there), so autograd skips the critic's weight gradients and DDP's hooks on them never fire."""
    module = s.accelerator.unwrap_model(s.nets[name])
    weights = {key: value.detach() for key, value in module.named_parameters()}
    return torch.func.functional_call(module, weights, inputs)


def synthesis_loss(
    s: Stage3State, reconstruction: torch.Tensor, attributes: torch.Tensor, labels: torch.Tensor, feedback_weight: float
) -> torch.Tensor:
    """L_EGS (Eq. 13): the frozen CLS_g must recognise synthetic seen features (Eq. 14: the VAE
    reconstructions, or prior samples with `sce_source="prior"`) and synthetic unseen features of
    random unseen classes (Eq. 15) among all classes. Fakes drawn from the prior get the feedback
    correction only with `egs_prior_feedback` (the published code generates them without it)."""
    config = s.config
    prior_weight = feedback_weight if config.egs_prior_feedback else 0.0
    seen_fake = reconstruction if config.sce_source == "reconstruction" else prior_fakes(s, attributes, prior_weight)
    picks = torch.from_numpy(s.stream.numpy_rng.integers(0, len(s.unseen_class_ids), size=len(labels)))
    unseen_labels = s.unseen_class_ids[picks.to(s.unseen_class_ids.device)]
    unseen_fake = prior_fakes(s, s.class_attributes[unseen_labels], prior_weight)
    return embedding_guided_synthesis_loss_eq13(
        s.guide(seen_fake), labels, s.guide(unseen_fake), unseen_labels, config.lambda_s, config.lambda_u
    )


def generator_step(s: Stage3State, feedback_weight: float, with_feedback: bool) -> dict[str, torch.Tensor]:
    """One step of E, G (and F in the feedback loop, Dec unless frozen) on L_S3 (Eq. 18):
    L_VAE (Eq. 10) + the generator's WGAN term (Eq. 11) + lambda_r L_Rec (Eq. 12) + L_EGS."""
    config, nets, optimizers = s.config, s.nets, s.optimizers
    x, a, y = draw_batch(s)
    for name in ("encoder", "generator", "feedback", "decoder"):
        optimizers[name].zero_grad()
    recon, mean, log_var = reconstruct(s, x, a, feedback_weight)
    vae = tfvaegan_vae_loss_eq10(recon, x, mean, log_var)
    adversarial = generator_adversarial_loss_eq11(frozen_call(s, "critic", recon, a), config.gamma_g)
    predicted, _ = nets["decoder"](recon)
    l_vg = tfvaegan_loss_eq9(vae, adversarial, attribute_reconstruction_loss_eq12(predicted, a, config.decoder_loss),
                             config.lambda_r)
    egs = (synthesis_loss(s, recon, a, y, feedback_weight) if config.lambda_s or config.lambda_u
           else torch.zeros((), device=x.device))
    loss = stage3_loss_eq18(l_vg, egs)
    s.accelerator.backward(loss)
    optimizers["encoder"].step()
    optimizers["generator"].step()
    if with_feedback:
        optimizers["feedback"].step()
    if config.lambda_r and not config.freeze_decoder:
        optimizers["decoder"].step()
    return {"generator": loss.detach(), "vae": vae.detach(), "egs": egs.detach()}


def training_pass(s: Stage3State, with_feedback: bool) -> dict[str, torch.Tensor | float]:
    """One batch position of one feedback loop: the critic steps, TF-VAEGAN's adaptive
    gradient-penalty weight, then the generator step."""
    config = s.config
    weight = config.feedback_weight if with_feedback else 0.0
    losses, penalties = zip(*(critic_step(s, weight) for _ in range(s.critic_iters)))
    if config.adaptive_gp:
        s.stream.extra["gp_lambda"] = adapt_gradient_penalty_weight(
            s.stream.extra["gp_lambda"], float(np.mean(torch.stack(penalties).tolist())), config.gp_adapt_bounds,
            config.gp_adapt_factor,
        )
    logs: dict[str, torch.Tensor | float] = dict(generator_step(s, weight, with_feedback))
    logs["critic"] = torch.stack(losses).mean()
    logs["gp_lambda"] = s.stream.extra["gp_lambda"]
    return logs


def _stage3_state(ctx: RunContext, train: SplitFeatures) -> Stage3State:
    """The stage's networks and optimizers prepared on the run's accelerator, and its data."""
    accelerator = ctx.accelerator
    model, device = ctx.model, accelerator.device
    model.eggn.train()
    nets, optimizers = _prepare(ctx, accelerator)
    stream = ctx.stage_state("stage3")
    stream.extra.setdefault("gp_lambda", model.config.gp_lambda)
    return Stage3State(
        accelerator=accelerator, config=model.config, nets=nets, optimizers=optimizers,
        guide=model.scen.regression_head.eval().requires_grad_(False),
        features=train.features.to(device), labels=train.labels.to(device),
        class_attributes=model.class_attributes.to(device), unseen_class_ids=model.unseen_class_ids.to(device),
        sampler=ClassBalancedSampler(train.labels.numpy()), batch_size=ctx.args.batch_size,
        critic_iters=ctx.args.critic_iters, stream=stream,
    )


def train_stage3(
    ctx: RunContext,
    train: SplitFeatures,
    epoch_scorer: Callable[[int], list[Scores]] | None = None,
    score_every: int = 0,
) -> dict[int, list[Scores]]:
    """Train the EGGN for `stage3_epochs` epochs on `train` (scaled features (N, D) in [0, 1]
    and labels (N,)), resumably.

    With `epoch_scorer`, every `score_every` epochs (and after the last) its scores are kept,
    keyed by epoch, checkpointed with the stage and returned: the validation run uses this to
    choose how many stage-3 epochs the real run trains."""
    # the networks stay in the model; the stage's optimizer state goes with _stage3_steps' locals
    scores, nets = _stage3_steps(ctx, train, epoch_scorer, score_every)
    ctx.model.eggn.eval()
    release_stage_memory(ctx.accelerator, *nets)
    return {int(epoch): by_epoch for epoch, by_epoch in scores.items()}


def _stage3_steps(ctx: RunContext, train: SplitFeatures, epoch_scorer: Callable[[int], list[Scores]] | None,
                  score_every: int) -> tuple[dict[str, list[Scores]], list[nn.Module]]:
    s = _stage3_state(ctx, train)
    args = ctx.args
    positions = steps_per_epoch(len(s.labels), args.batch_size, ctx.accelerator.num_processes)

    def step(stream: StageState) -> dict[str, torch.Tensor | float]:
        logs = training_pass(s, pass_uses_feedback(stream.step, positions, args.stage3_pass_order))
        epoch, position = divmod(stream.step + 1, 2 * positions)
        if epoch_scorer and position == 0 and (epoch % max(score_every, 1) == 0 or epoch == args.stage3_epochs):
            stream.extra.setdefault("epoch_scores", {})[str(epoch)] = epoch_scorer(epoch)
        return logs

    run_steps(ctx, "stage3", args.stage3_epochs * 2 * positions, s.stream, step)
    return s.stream.extra.get("epoch_scores", {}), list(s.nets.values())
