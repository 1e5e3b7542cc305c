"""Stage 3: train the EGGN (TF-VAEGAN) on the cached dense features, guided by the frozen CLS_g
through L_EGS (Eq. 13-15); the generator-side objective is L_S3 (Eq. 18).

One step is one batch position of TF-VAEGAN's epoch loop, run twice: without and with feedback.
Each pass makes `critic_iters` critic steps (each on a fresh class-balanced batch, each also
updating the attribute decoder on real features) and one generator step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data.sampling import ClassBalancedSampler
from ..modeling_scegg import (
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
from .common import RunContext, run_steps


@dataclass
class _Networks:
    """The prepared (possibly DDP-wrapped) networks and their optimizers; sub-networks are only
    ever called through these wrappers, or DDP would silently skip gradient synchronisation."""

    encoder: torch.nn.Module
    generator: torch.nn.Module
    critic: torch.nn.Module
    decoder: torch.nn.Module
    feedback: torch.nn.Module
    opt_encoder: torch.optim.Optimizer
    opt_generator: torch.optim.Optimizer
    opt_critic: torch.optim.Optimizer
    opt_decoder: torch.optim.Optimizer
    opt_feedback: torch.optim.Optimizer


def steps_per_epoch(num_train: int, batch_size: int, num_processes: int) -> int:
    """Generator steps per epoch so that one epoch covers the training set once globally."""
    return max(1, math.ceil(num_train / (batch_size * num_processes)))


def _prepare(ctx: RunContext, accelerator) -> _Networks:
    args, eggn = ctx.args, ctx.model.eggn
    lr = args.stage3_lr
    gan_betas = (0.5, 0.999)
    optimizers = [
        torch.optim.Adam(eggn.encoder.parameters(), lr=args.encoder_lr or lr),
        torch.optim.Adam(eggn.generator.parameters(), lr=lr, betas=gan_betas),
        torch.optim.Adam(eggn.critic.parameters(), lr=lr, betas=gan_betas),
        torch.optim.Adam(eggn.decoder.parameters(), lr=lr, betas=gan_betas),
        torch.optim.Adam(eggn.feedback.parameters(), lr=args.feedback_lr or lr, betas=gan_betas),
    ]
    prepared = accelerator.prepare(eggn.encoder, eggn.generator, eggn.critic, eggn.decoder, eggn.feedback, *optimizers)
    return _Networks(*prepared)


def train_stage3(
    ctx: RunContext,
    train_cache: dict[str, torch.Tensor],
    epoch_scorer: Callable[[int], list[dict[str, float]]] | None = None,
    score_every: int = 0,
) -> dict[str, list[dict[str, float]]]:
    """`train_cache` holds scaled `features` (N, D) in [0, 1] and `labels` (N,).

    With `epoch_scorer`, every `score_every` epochs (and after the last) its scores are kept,
    keyed by epoch, checkpointed with the stage and returned: the validation run uses this to
    choose how many stage-3 epochs the real run trains."""
    accelerator = ctx.make_accelerator()
    model, config, args = ctx.model, ctx.model.config, ctx.args
    ctx.model.eggn.train()
    nets = _prepare(ctx, accelerator)
    device = accelerator.device
    classifier = model.scen.regression_head.eval().requires_grad_(False)
    features = train_cache["features"].to(device)
    labels_np = train_cache["labels"].numpy()
    sampler = ClassBalancedSampler(labels_np)
    labels = train_cache["labels"].to(device)
    attributes = model.class_attributes.to(device)
    unseen = model.unseen_class_ids.to(device)
    state = ctx.stage_state("stage3", accelerator)
    state.extra.setdefault("gp_lambda", config.gp_lambda)
    use_egs = bool(config.lambda_s or config.lambda_u)

    def batch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(sampler.sample(args.batch_size, rng)).to(device)
        y = labels[idx]
        return features[idx], attributes[y], y

    def fake_from_posterior(x, a, gen, weight) -> torch.Tensor:
        mean, log_var = nets.encoder(x, a)
        z = reparameterize(mean, log_var, gen)
        return generate_features(nets.generator, nets.decoder, nets.feedback, z, a, weight), mean, log_var

    def critic_step(state, weight: float) -> tuple[float, float]:
        x, a, _ = batch(state.numpy_rng)
        nets.opt_decoder.zero_grad()
        predicted, _ = nets.decoder(x)
        accelerator.backward(config.lambda_r * attribute_reconstruction_loss_eq12(predicted, a, config.decoder_loss))
        nets.opt_decoder.step()
        nets.opt_critic.zero_grad()
        with torch.no_grad():
            fake, _, _ = fake_from_posterior(x, a, state.torch_rng, weight)
        penalty = gradient_penalty_eq11(nets.critic, x, fake, a, state.torch_rng)
        wasserstein = wgan_critic_loss_eq11(nets.critic(x, a), nets.critic(fake, a), config.gamma_d)
        loss = wasserstein + config.gamma_d * state.extra["gp_lambda"] * penalty
        accelerator.backward(loss)
        nets.opt_critic.step()
        return loss.item(), penalty.item()

    def generator_step(state, weight: float, with_feedback: bool) -> dict[str, float]:
        x, a, y = batch(state.numpy_rng)
        for optimizer in (nets.opt_encoder, nets.opt_generator, nets.opt_feedback, nets.opt_decoder):
            optimizer.zero_grad()
        recon, mean, log_var = fake_from_posterior(x, a, state.torch_rng, weight)
        vae = tfvaegan_vae_loss_eq10(recon, x, mean, log_var)
        adversarial = generator_adversarial_loss_eq11(nets.critic(recon, a), config.gamma_g)
        predicted, _ = nets.decoder(recon)
        reconstruction = attribute_reconstruction_loss_eq12(predicted, a, config.decoder_loss)
        l_vg = tfvaegan_loss_eq9(vae, adversarial, reconstruction, config.lambda_r)
        egs = torch.zeros((), device=device)
        if use_egs:
            egs = _synthesis_loss(state, recon, a, y, weight)
        loss = stage3_loss_eq18(l_vg, egs)
        accelerator.backward(loss)
        nets.opt_encoder.step()
        nets.opt_generator.step()
        if with_feedback:
            nets.opt_feedback.step()
        if config.lambda_r and not config.freeze_decoder:
            nets.opt_decoder.step()
        return {"generator": loss.item(), "vae": vae.item(), "egs": egs.item()}

    def _synthesis_loss(state, recon, a, y, weight) -> torch.Tensor:
        latent_dim = config.resolved_latent_dim
        if config.sce_source == "reconstruction":
            seen_fake = recon
        else:
            z = torch.randn(len(y), latent_dim, generator=state.torch_rng).to(device)
            seen_fake = generate_features(nets.generator, nets.decoder, nets.feedback, z, a, weight)
        picks = torch.from_numpy(state.numpy_rng.integers(0, len(unseen), size=len(y))).to(device)
        y_unseen = unseen[picks]
        z = torch.randn(len(y), latent_dim, generator=state.torch_rng).to(device)
        unseen_fake = generate_features(nets.generator, nets.decoder, nets.feedback, z, attributes[y_unseen], weight)
        return embedding_guided_synthesis_loss_eq13(
            classifier(seen_fake), y, classifier(unseen_fake), y_unseen, config.lambda_s, config.lambda_u
        )

    def step(state) -> dict[str, float]:
        logs: dict[str, float] = {}
        for loop in (0, 1):
            weight = config.feedback_weight if loop == 1 else 0.0
            critic_losses, penalties = zip(*(critic_step(state, weight) for _ in range(args.critic_iters)))
            if config.adaptive_gp:
                state.extra["gp_lambda"] = adapt_gradient_penalty_weight(
                    state.extra["gp_lambda"], float(np.mean(penalties)), config.gp_adapt_bounds, config.gp_adapt_factor
                )
            logs = generator_step(state, weight, with_feedback=loop == 1)
            logs["critic"] = float(np.mean(critic_losses))
        logs["gp_lambda"] = state.extra["gp_lambda"]
        return logs

    per_epoch = steps_per_epoch(len(labels_np), args.batch_size, accelerator.num_processes)

    def step_and_score(state) -> dict[str, float]:
        logs = step(state)
        epoch, finished_epoch = divmod(state.step + 1, per_epoch)
        if epoch_scorer and finished_epoch == 0 and (epoch % max(score_every, 1) == 0 or epoch == args.stage3_epochs):
            state.extra.setdefault("epoch_scores", {})[str(epoch)] = epoch_scorer(epoch)
        return logs

    run_steps(ctx, accelerator, "stage3", args.stage3_epochs * per_epoch, state, step_and_score)
    ctx.model.eggn.eval()
    accelerator.free_memory()
    return state.extra.get("epoch_scores", {})
