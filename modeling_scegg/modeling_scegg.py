"""SC-EGG: Semantic Compression Embedding Guided Generation (Hong et al., IJCAI-22).

The model cascades two networks of the paper:

* the semantic compression embedding network (SCEN): a local embedding network (LEN, Eq. 1-3)
  that attends over image regions once per attribute, and a global embedding network (GEN,
  Eq. 4-5) that compresses the attribute-level local features into one dense-semantic feature g;
* the embedding guided generative network (EGGN): a TF-VAEGAN (encoder, generator with feedback,
  critic, attribute decoder, feedback module) that learns to synthesise g from class attributes,
  guided by the SCEN's global classifier (Eq. 13-15).

Final GZSL / CZSL classifiers trained on real seen and synthetic unseen features are part of the
model, so a checkpoint restored with `from_pretrained` predicts at once. The stage-wise training
lives outside this file (it calls the loss functions below, which name the paper's equations);
this file depends only on torch, transformers and its sibling configuration file so it can travel
to the Hub as remote code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_scegg import SCEGGConfig

_SCALER_EPS = 1e-12
_SYNTHESIS_CHUNK = 4096  # rows generated at once by `synthesize`


@dataclass
class SCEGGOutput(ModelOutput):
    """Predictions of SC-EGG for a batch of images.

    Args:
        logits: (B, C) GZSL scores over all classes, in class-id order (calibrated by
            `config.seen_score_offset`).
        czsl_logits: (B, Cu) CZSL scores over the unseen classes, in `config.unseen_class_ids` order.
        dense_features: (B, D) the min-max scaled dense-semantic feature g the classifiers see.
        local_scores: (B, C) the LEN's class scores p_l (Eq. 3); None for the pooled baseline.
        attentions: (B, A, R) attribute attention over regions, with `output_attentions=True`.
    """

    logits: torch.FloatTensor | None = None
    czsl_logits: torch.FloatTensor | None = None
    dense_features: torch.FloatTensor | None = None
    local_scores: torch.FloatTensor | None = None
    attentions: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------
# SCEN: semantic compression embedding network
# ----------------------------------------------------------------------------------------------
class SCEGGLocalEmbeddingNetwork(nn.Module):
    """LEN (Eq. 1-3): one attention map over regions per attribute, queried by its word vector.

    The attention matrix W_att starts at zero so every attribute first looks at all regions
    equally; the attribute queries V start as the row-normalised word vectors and are learnt
    unless `train_word_vectors` is off.
    """

    def __init__(self, config: SCEGGConfig):
        super().__init__()
        self.attention_weight = nn.Parameter(torch.empty(config.word_dim, config.feature_dim))
        self.embedding_weight = nn.Parameter(torch.empty(config.word_dim, config.feature_dim))
        self.attribute_queries = nn.Parameter(
            torch.empty(config.num_attributes, config.word_dim), requires_grad=config.train_word_vectors
        )
        self.register_buffer("word_vectors", torch.zeros(config.num_attributes, config.word_dim))

    def attribute_attention(self, regions: torch.Tensor) -> torch.Tensor:
        """Eq. 1's softmax: (B, R, D) L2-normalised regions -> (B, A, R) attention."""
        keys = self.attribute_queries @ self.attention_weight
        return torch.softmax(torch.einsum("ad,brd->bar", keys, regions), dim=-1)

    def local_features(self, attention: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Eq. 1: h_n, the attention-weighted sum of regions, (B, A, D)."""
        return attention @ regions

    def local_embedding(self, local_features: torch.Tensor) -> torch.Tensor:
        """Eq. 2: e_l[n] = h_n^T W_beta v_n, the visual-to-semantic embedding, (B, A)."""
        projections = self.attribute_queries @ self.embedding_weight
        return (local_features * projections.unsqueeze(0)).sum(-1)

    def attended_embedding(self, attention: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Eq. 2 without the local features: h_n^T W_beta v_n = sum_r a_nr r_r^T (W_beta^T v_n).

        One (B R, D) x (D, A) product replaces the (B, A, D) tensor h, which is the largest one
        of the LEN and costs as much memory traffic as the attention itself."""
        projections = self.attribute_queries @ self.embedding_weight
        return (attention * (regions @ projections.t()).transpose(1, 2)).sum(-1)

    @staticmethod
    def local_class_scores(embedding: torch.Tensor, class_attributes: torch.Tensor) -> torch.Tensor:
        """Eq. 3: p_l = e_l . a(y) against L2-normalised class attribute vectors, (B, C)."""
        return embedding @ F.normalize(class_attributes, dim=-1).t()

    def attend(
        self, region_features: torch.Tensor, class_attributes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 1-3 as training and inference run them: normalised regions (B, R, D), attention
        (B, A, R) and p_l (B, C), never forming h; `forward` is the same maths with h explicit."""
        regions = F.normalize(region_features, dim=-1)
        attention = self.attribute_attention(regions)
        scores = self.local_class_scores(self.attended_embedding(attention, regions), class_attributes)
        return regions, attention, scores

    def forward(
        self, region_features: torch.Tensor, class_attributes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns local features h (B, A, D), attention (B, A, R) and local scores p_l (B, C)."""
        regions = F.normalize(region_features, dim=-1)
        attention = self.attribute_attention(regions)
        local = self.local_features(attention, regions)
        scores = self.local_class_scores(self.local_embedding(local), class_attributes)
        return local, attention, scores


class SCEGGSemanticCompression(nn.Module):
    """SC (Eq. 4): an MLP along the attribute axis, shared by all D channels, that compresses the
    A local features into one global feature g without mixing channels."""

    def __init__(self, config: SCEGGConfig):
        super().__init__()
        hidden = config.resolved_sc_hidden_dim
        self.net = nn.Sequential(
            nn.Linear(config.num_attributes, hidden),
            nn.LeakyReLU(config.sc_negative_slope),
            nn.Linear(hidden, 1),
        )

    def forward(self, local_features: torch.Tensor) -> torch.Tensor:
        return self.net(local_features.transpose(1, 2)).squeeze(-1)

    def compress_attended(self, attention: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Eq. 4 on h = attention @ regions, (B, D). The first Linear runs along the attribute
        axis, so W_1 h = (W_1 attention) regions; when R (A + D) < A D (49 x 7 x 512 or
        196 x 14 x 2048 regions with 312 attributes) that order costs fewer operations and never
        forms h. Otherwise h is formed and `forward` runs."""
        num_attributes, num_regions = attention.shape[-2:]
        feature_dim = regions.shape[-1]
        if num_regions * (num_attributes + feature_dim) >= num_attributes * feature_dim:
            return self(attention @ regions)
        first, act, second = self.net
        hidden = act((first.weight @ attention) @ regions + first.bias.unsqueeze(-1))
        return (second.weight @ hidden).squeeze(-2) + second.bias


class SCEGGRegressionHead(nn.Module):
    """The stage-2 global classifier CLS_g: trained by L_SCR (Eq. 8) to reproduce the frozen local
    scores from g alone, then frozen again to guide the generator (Eq. 14-15)."""

    def __init__(self, config: SCEGGConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.feature_dim, config.regression_hidden_dim),
            nn.LeakyReLU(config.sc_negative_slope),
            nn.Linear(config.regression_hidden_dim, config.num_classes),
        )

    def forward(self, dense_features: torch.Tensor) -> torch.Tensor:
        return self.net(dense_features)


class SCEGGSemanticCompressionEmbeddingNetwork(nn.Module):
    """SCEN = LEN + GEN (SC, the stage-1 CLS_g of Eq. 5, the stage-2 regression head) plus the
    min-max scaler that maps g into [0, 1] for the EGGN's sigmoid generator."""

    def __init__(self, config: SCEGGConfig):
        super().__init__()
        self.config = config
        self.local_embedding = SCEGGLocalEmbeddingNetwork(config)
        self.compression = SCEGGSemanticCompression(config)
        self.global_classifier = nn.Linear(config.feature_dim, config.num_classes)
        self.regression_head = SCEGGRegressionHead(config)
        self.register_buffer("feature_min", torch.zeros(config.feature_dim))
        self.register_buffer("feature_max", torch.ones(config.feature_dim))

    def forward(
        self, region_features: torch.Tensor, class_attributes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage-1 view: local scores p_l, global scores p_g = CLS_g(SC(h)) (Eq. 5), h, attention."""
        local, attention, local_scores = self.local_embedding(region_features, class_attributes)
        global_scores = self.global_classifier(self.compression(local))
        return local_scores, global_scores, local, attention

    def compress(self, local_features: torch.Tensor) -> torch.Tensor:
        """g after stage 1: the attribute mean (published) or the trained SC MLP (paper)."""
        if self.config.runtime_compression == "mean":
            return local_features.mean(dim=1)
        return self.compression(local_features)

    def compress_attended(self, attention: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """`compress(attention @ regions)` without forming h: the attribute mean of h is the
        mean attention applied to the regions."""
        if self.config.runtime_compression == "mean":
            return (attention.mean(dim=1, keepdim=True) @ regions).squeeze(-2)
        return self.compression.compress_attended(attention, regions)

    def scale(self, features: torch.Tensor) -> torch.Tensor:
        """Min-max scaling with the range fitted on the trainval features."""
        span = (self.feature_max - self.feature_min).clamp_min(_SCALER_EPS)
        return (features - self.feature_min) / span

    @torch.no_grad()
    def fit_scaler(self, raw_features: torch.Tensor) -> None:
        """Fit the per-dimension range on unscaled trainval features (N, D)."""
        self.feature_min.copy_(raw_features.min(dim=0).values)
        self.feature_max.copy_(raw_features.max(dim=0).values)


# ----------------------------------------------------------------------------------------------
# EGGN: embedding guided generative network (TF-VAEGAN)
# ----------------------------------------------------------------------------------------------
class _TFVAEGANLinear(nn.Linear):
    """A Linear layer of the TF-VAEGAN networks: it starts from N(0, 0.02) with zero bias there,
    unlike the SCEN heads that keep torch's default init."""


class SCEGGEncoder(nn.Module):
    """E(g, a) -> (mu, logvar) of the VAE posterior over z."""

    def __init__(self, config: SCEGGConfig):
        super().__init__()
        latent = config.resolved_latent_dim
        self.fc1 = _TFVAEGANLinear(config.feature_dim + config.num_attributes, config.encoder_hidden_dim)
        self.fc2 = _TFVAEGANLinear(config.encoder_hidden_dim, 2 * latent)
        self.mean = _TFVAEGANLinear(2 * latent, latent)
        self.log_var = _TFVAEGANLinear(2 * latent, latent)
        self.act = nn.LeakyReLU(config.eggn_negative_slope)

    def forward(self, features: torch.Tensor, attributes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.act(self.fc2(self.act(self.fc1(torch.cat([features, attributes], dim=-1)))))
        return self.mean(hidden), self.log_var(hidden)


class SCEGGGenerator(nn.Module):
    """G(z, a): the VAE decoder and GAN generator; the feedback is added to its hidden layer."""

    def __init__(self, config: SCEGGConfig):
        super().__init__()
        self.fc1 = _TFVAEGANLinear(config.resolved_latent_dim + config.num_attributes, config.generator_hidden_dim)
        self.fc2 = _TFVAEGANLinear(config.generator_hidden_dim, config.feature_dim)
        self.act = nn.LeakyReLU(config.eggn_negative_slope)

    def forward(
        self,
        latent: torch.Tensor,
        attributes: torch.Tensor,
        feedback: torch.Tensor | None = None,
        feedback_weight: float = 0.0,
    ) -> torch.Tensor:
        hidden = self.act(self.fc1(torch.cat([latent, attributes], dim=-1)))
        if feedback is not None:
            hidden = hidden + feedback_weight * feedback
        return torch.sigmoid(self.fc2(hidden))


class SCEGGCritic(nn.Module):
    """D(x, a): the conditional WGAN critic."""

    def __init__(self, config: SCEGGConfig):
        super().__init__()
        self.fc1 = _TFVAEGANLinear(config.feature_dim + config.num_attributes, config.critic_hidden_dim)
        self.fc2 = _TFVAEGANLinear(config.critic_hidden_dim, 1)
        self.act = nn.LeakyReLU(config.eggn_negative_slope)

    def forward(self, features: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(torch.cat([features, attributes], dim=-1))))


class SCEGGAttributeDecoder(nn.Module):
    """Dec(x): maps a feature back to an L2-normalised attribute vector; its hidden layer feeds the
    feedback module and, in the published classifier, augments the classifier input."""

    def __init__(self, config: SCEGGConfig):
        super().__init__()
        self.fc1 = _TFVAEGANLinear(config.feature_dim, config.decoder_hidden_dim)
        self.fc2 = _TFVAEGANLinear(config.decoder_hidden_dim, config.num_attributes)
        self.act = nn.LeakyReLU(config.eggn_negative_slope)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (attributes (B, A), hidden (B, H))."""
        hidden = self.act(self.fc1(features))
        return F.normalize(self.fc2(hidden), dim=-1), hidden


class SCEGGFeedback(nn.Module):
    """F: turns the decoder's hidden layer into a correction of the generator's hidden layer."""

    def __init__(self, config: SCEGGConfig):
        super().__init__()
        self.fc1 = _TFVAEGANLinear(config.decoder_hidden_dim, config.generator_hidden_dim)
        self.fc2 = _TFVAEGANLinear(config.generator_hidden_dim, config.generator_hidden_dim)
        self.act = nn.LeakyReLU(config.eggn_negative_slope)

    def forward(self, decoder_hidden: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(decoder_hidden))))


class SCEGGEmbeddingGuidedGenerativeNetwork(nn.Module):
    """EGGN: the five TF-VAEGAN networks, trained in stage 3 against the frozen SCEN."""

    def __init__(self, config: SCEGGConfig):
        super().__init__()
        self.encoder = SCEGGEncoder(config)
        self.generator = SCEGGGenerator(config)
        self.critic = SCEGGCritic(config)
        self.decoder = SCEGGAttributeDecoder(config)
        self.feedback = SCEGGFeedback(config)


class SCEGGLinearClassifier(nn.Module):
    """The final single-layer classifier (TF-VAEGAN's LINEAR_LOGSOFTMAX without the log-softmax,
    which losses and argmax do not need)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = _TFVAEGANLinear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


def generate_features(
    generator: Callable[..., torch.Tensor],
    decoder: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    feedback: Callable[..., torch.Tensor],
    latent: torch.Tensor,
    attributes: torch.Tensor,
    feedback_weight: float,
) -> torch.Tensor:
    """TF-VAEGAN's two-pass generation: a plain pass, then, when the feedback weight is non-zero,
    a second pass whose hidden layer is corrected by F(Dec_hidden(x)) of the first.

    The networks are arguments (not attributes) so that trainers can pass their DDP-wrapped
    copies and keep gradient synchronisation intact.
    """
    if feedback_weight == 0:
        return generator(latent, attributes)
    with torch.no_grad():  # TF-VAEGAN feeds back detached decoder features: no gradient flows here
        _, hidden = decoder(generator(latent, attributes))
    return generator(latent, attributes, feedback(hidden), feedback_weight)


def _random(kind: Callable, shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw on the generator's own device (a CPU generator keeps runs reproducible on any
    accelerator), then move next to `like`."""
    device = generator.device if generator is not None else like.device
    return kind(tuple(shape), generator=generator, device=device, dtype=like.dtype).to(like.device)


def reparameterize(mean: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps, the VAE reparameterisation."""
    return mean + torch.exp(0.5 * log_var) * _random(torch.randn, mean.shape, mean, generator)


# ----------------------------------------------------------------------------------------------
# Losses (the paper's equation numbers in the names)
# ----------------------------------------------------------------------------------------------
def _cross_entropy_over(scores: torch.Tensor, labels: torch.Tensor, class_ids: torch.Tensor | None) -> torch.Tensor:
    """Cross entropy whose softmax runs over `class_ids` only (labels are class ids, not positions)."""
    if class_ids is None:
        return F.cross_entropy(scores, labels)
    lookup = torch.full((scores.shape[-1],), -1, dtype=torch.long, device=scores.device)
    lookup[class_ids] = torch.arange(len(class_ids), device=scores.device)
    positions = lookup[labels]
    if (positions < 0).any():
        raise ValueError("labels contain classes outside the class subset the softmax runs over")
    return F.cross_entropy(scores[:, class_ids], positions)


def local_embedding_cross_entropy_eq6(
    local_scores: torch.Tensor, labels: torch.Tensor, class_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """L_LCE (Eq. 6). `class_ids` restricts the softmax (the published code uses the seen classes)."""
    return _cross_entropy_over(local_scores, labels, class_ids)


def global_embedding_cross_entropy_eq7(
    global_scores: torch.Tensor, labels: torch.Tensor, class_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """L_GCE (Eq. 7), with the same class restriction as Eq. 6."""
    return _cross_entropy_over(global_scores, labels, class_ids)


def semantic_consistent_regression_loss_eq8(
    global_scores: torch.Tensor, local_scores: torch.Tensor, reduction: str = "mse"
) -> torch.Tensor:
    """L_SCR (Eq. 8, the whole stage-2 loss of Eq. 17): pull p_g towards the frozen p_l.

    `"mse"` averages over classes and samples (published); `"sum_l2"` sums the squared
    differences of each sample (||p_l - p_g||^2) and averages over the batch (paper)."""
    target = local_scores.detach()
    if reduction == "mse":
        return F.mse_loss(global_scores, target)
    if reduction == "sum_l2":
        return (global_scores - target).pow(2).sum(dim=-1).mean()
    raise ValueError(f"regression reduction must be 'mse' or 'sum_l2', got {reduction!r}")


def tfvaegan_vae_loss_eq10(
    reconstruction: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor
) -> torch.Tensor:
    """L_VAE (Eq. 10): KL(q(z|g,a) || N(0, I)) plus the Bernoulli reconstruction term, both summed
    over dimensions and averaged over the batch as TF-VAEGAN does."""
    batch = target.shape[0]
    bce = F.binary_cross_entropy(reconstruction.clamp(1e-12, 1.0), target.detach(), reduction="sum") / batch
    kld = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp()) / batch
    return bce + kld


def wgan_critic_loss_eq11(critic_real: torch.Tensor, critic_fake: torch.Tensor, gamma: float) -> torch.Tensor:
    """The critic's side of L_WGAN (Eq. 11) without the penalty: gamma * (E[D(fake)] - E[D(real)])."""
    return gamma * (critic_fake.mean() - critic_real.mean())


def gradient_penalty_eq11(
    critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    attributes: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The unweighted penalty E[(||grad D(g', a)||_2 - 1)^2] of Eq. 11 at g' = tau g + (1-tau) g_hat.

    Callers multiply by lambda (and gamma); the unweighted value drives the adaptive lambda."""
    tau = _random(torch.rand, (real.shape[0], 1), real, generator)
    mixed = (tau * real.detach() + (1 - tau) * fake.detach()).requires_grad_(True)
    scores = critic(mixed, attributes)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return (grad.norm(2, dim=1) - 1).pow(2).mean()


def adapt_gradient_penalty_weight(
    weight: float, mean_penalty: float, bounds: Sequence[float], factor: float
) -> float:
    """TF-VAEGAN's adaptive lambda: grow it while the critic's gradients stray from norm 1, shrink
    it once they are well inside."""
    lower, upper = bounds
    if mean_penalty > upper:
        return weight * factor
    if mean_penalty < lower:
        return weight / factor
    return weight


def generator_adversarial_loss_eq11(critic_fake: torch.Tensor, gamma: float) -> torch.Tensor:
    """The generator's side of L_WGAN (Eq. 11): -gamma * E[D(g_hat, a)]."""
    return -gamma * critic_fake.mean()


def attribute_reconstruction_loss_eq12(
    predicted: torch.Tensor, attributes: torch.Tensor, kind: str = "weighted_l1"
) -> torch.Tensor:
    """One term of L_Rec (Eq. 12), averaged over the batch.

    `"l1"` is the paper's ||Dec(x) - a||_1; `"weighted_l1"` is TF-VAEGAN's published form
    sum_i |d_i|^3 / ||d||_2, which weights each error by its share of the squared error."""
    diff = predicted - attributes
    if kind == "l1":
        return diff.abs().sum(dim=-1).mean()
    if kind == "weighted_l1":
        norm = diff.pow(2).sum(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)
        return (diff.pow(2) / norm * diff.abs()).sum(dim=-1).mean()
    raise ValueError(f"decoder loss must be 'weighted_l1' or 'l1', got {kind!r}")


def tfvaegan_loss_eq9(
    vae_loss: torch.Tensor, adversarial_loss: torch.Tensor, reconstruction_loss: torch.Tensor, lambda_r: float
) -> torch.Tensor:
    """L_VG (Eq. 9) = L_VAE + lambda_w L_WGAN + lambda_r L_Rec; lambda_w is already inside the
    adversarial term (gamma of Eq. 11)."""
    return vae_loss + adversarial_loss + lambda_r * reconstruction_loss


def embedding_guided_synthesis_loss_eq13(
    seen_scores: torch.Tensor,
    seen_labels: torch.Tensor,
    unseen_scores: torch.Tensor,
    unseen_labels: torch.Tensor,
    lambda_s: float,
    lambda_u: float,
) -> torch.Tensor:
    """L_EGS (Eq. 13) = lambda_s L_SCE (Eq. 14) + lambda_u L_UCE (Eq. 15): the frozen CLS_g must
    recognise synthetic seen and unseen features among all classes."""
    sce = F.cross_entropy(seen_scores, seen_labels)
    uce = F.cross_entropy(unseen_scores, unseen_labels)
    return lambda_s * sce + lambda_u * uce


def stage1_loss_eq16(
    local_scores: torch.Tensor,
    global_scores: torch.Tensor,
    labels: torch.Tensor,
    lambda_l: float,
    lambda_g: float,
    class_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_S1 (Eq. 16) = L_LCE + lambda_g L_GCE; `lambda_l` exists for the "w/o L_LCE" ablation."""
    loss = lambda_g * global_embedding_cross_entropy_eq7(global_scores, labels, class_ids)
    if lambda_l:
        loss = loss + lambda_l * local_embedding_cross_entropy_eq6(local_scores, labels, class_ids)
    return loss


def stage3_loss_eq18(tfvaegan_loss: torch.Tensor, synthesis_loss: torch.Tensor) -> torch.Tensor:
    """L_S3 (Eq. 18) = L_VG + L_EGS, the generator-side objective of stage 3."""
    return tfvaegan_loss + synthesis_loss


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
class SCEGGPreTrainedModel(PreTrainedModel):
    config_class = SCEGGConfig
    base_model_prefix = "scegg"
    main_input_name = "region_features"

    def _init_weights(self, module: nn.Module) -> None:
        """Each network gets the init of the code it follows: torch's default for the SCEN heads,
        N(0, 0.02) for TF-VAEGAN, and for the LEN a zero attention (uniform at start), N(0, 1)
        embedding and queries copied from the normalised word vectors."""
        if isinstance(module, _TFVAEGANLinear):
            init.normal_(module.weight, mean=0.0, std=self.config.eggn_init_std)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, SCEGGLocalEmbeddingNetwork):
            init.zeros_(module.attention_weight)
            init.normal_(module.embedding_weight, mean=0.0, std=1.0)
            init.zeros_(module.word_vectors)
            init.zeros_(module.attribute_queries)
        elif isinstance(module, SCEGGSemanticCompressionEmbeddingNetwork):
            init.zeros_(module.feature_min)
            init.ones_(module.feature_max)
        elif isinstance(module, SCEGGModel):
            init.zeros_(module.class_attributes)


class SCEGGModel(SCEGGPreTrainedModel):
    """SC-EGG with its SCEN, EGGN and final GZSL / CZSL classifiers.

    Class semantics (attribute matrix, word vectors) are persistent buffers, class names live in
    `config.id2label`, and the min-max scaler is part of the SCEN, so a saved checkpoint alone
    restores a model that predicts.
    """

    def __init__(self, config: SCEGGConfig):
        super().__init__(config)
        self.scen = SCEGGSemanticCompressionEmbeddingNetwork(config)
        self.eggn = SCEGGEmbeddingGuidedGenerativeNetwork(config)
        self.gzsl_classifier = SCEGGLinearClassifier(config.classifier_input_dim, config.num_classes)
        self.czsl_classifier = SCEGGLinearClassifier(config.classifier_input_dim, config.num_unseen_classes)
        self.register_buffer("class_attributes", torch.zeros(config.num_classes, config.num_attributes))
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, made strict: transformers re-initialises weights that
        are missing from a checkpoint with a warning, which for SC-EGG silently yields a model
        that predicts noise; here a missing tensor or a config of other sizes is an error naming
        what differs."""
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except RuntimeError as error:
            if "mismatched" not in str(error) and "size mismatch" not in str(error):
                raise
            raise ValueError(_describe_size_mismatch(pretrained_model_name_or_path, kwargs.get("config"))) from error
        if info["missing_keys"] and not wants_info:
            raise ValueError(
                f"checkpoint {pretrained_model_name_or_path} lacks {len(info['missing_keys'])} tensors of "
                f"SCEGGModel, e.g. {sorted(info['missing_keys'])[:5]}; it is not a complete SC-EGG checkpoint"
            )
        return (model, info) if wants_info else model

    # -- semantics -----------------------------------------------------------------------------
    @torch.no_grad()
    def set_class_semantics(self, class_attributes: torch.Tensor, word_vectors: torch.Tensor | None = None) -> None:
        """Install the class attribute matrix (C, A) and the attribute word vectors (A, dv); the
        LEN's queries restart from the normalised word vectors, as at the start of stage 1."""
        cfg = self.config
        dtype = self.class_attributes.dtype
        class_attributes = _checked_matrix("class_attributes", class_attributes, dtype,
                                           ("num_classes", cfg.num_classes), ("num_attributes", cfg.num_attributes))
        self.class_attributes.copy_(class_attributes)
        if word_vectors is not None:
            word_vectors = _checked_matrix("word_vectors", word_vectors, dtype,
                                           ("num_attributes", cfg.num_attributes), ("word_dim", cfg.word_dim))
            local = self.scen.local_embedding
            local.word_vectors.copy_(word_vectors)
            local.attribute_queries.copy_(F.normalize(word_vectors, dim=-1))

    @property
    def has_class_semantics(self) -> bool:
        return bool(self.class_attributes.abs().sum() > 0)

    @property
    def unseen_class_ids(self) -> torch.Tensor:
        return torch.tensor(self.config.unseen_class_ids, device=self.class_attributes.device)

    @property
    def seen_class_ids(self) -> torch.Tensor:
        return torch.tensor(self.config.seen_class_ids, device=self.class_attributes.device)

    # -- features --------------------------------------------------------------------------------
    def check_region_features(self, region_features: torch.Tensor) -> torch.Tensor:
        """Validate (B, R, D) region features and cast them to the model's dtype."""
        cfg = self.config
        if not isinstance(region_features, torch.Tensor):
            raise TypeError(f"region_features must be a torch.Tensor of shape (batch, {cfg.num_regions}, "
                            f"{cfg.feature_dim}), got {type(region_features).__name__}")
        if not region_features.is_floating_point():
            raise TypeError(f"region_features must be a floating point tensor, got dtype {region_features.dtype}")
        shape = tuple(region_features.shape)
        if region_features.dim() != 3 or shape[1:] != (cfg.num_regions, cfg.feature_dim):
            raise ValueError(
                f"region_features must have shape (batch, num_regions={cfg.num_regions}, "
                f"feature_dim={cfg.feature_dim}), got {shape}"
            )
        _check_finite("region_features", region_features)
        return region_features.to(self.class_attributes.dtype)

    def raw_dense_features(self, region_features: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Unscaled g, with the local scores and attention that produced it (None for the
        pooled-feature baseline, which has no SCEN)."""
        if self.config.dense_feature_source == "pooled":
            return {"features": region_features.mean(dim=1), "local_scores": None, "attentions": None}
        regions, attention, scores = self.scen.local_embedding.attend(region_features, self.class_attributes)
        return {"features": self.scen.compress_attended(attention, regions), "local_scores": scores, "attentions": attention}

    def classifier_features(self, dense_features: torch.Tensor) -> torch.Tensor:
        """Input of the final classifiers: [x, Dec(x), Dec_hidden(x)] (published) or x."""
        if self.config.classifier_input == "plain":
            return dense_features
        attributes, hidden = self.eggn.decoder(dense_features)
        return torch.cat([dense_features, attributes, hidden], dim=-1)

    # -- inference -------------------------------------------------------------------------------
    def forward(
        self,
        region_features: torch.Tensor,
        output_attentions: bool = False,
        return_dict: bool | None = None,
    ) -> SCEGGOutput | tuple[torch.Tensor, ...]:
        """Classify images from their region features (B, R, D)."""
        if not self.has_class_semantics:
            raise RuntimeError("SCEGGModel has no class attributes: call set_class_semantics() or load a trained checkpoint")
        regions = self.check_region_features(region_features)
        raw = self.raw_dense_features(regions)
        dense = self.scen.scale(raw["features"])
        inputs = self.classifier_features(dense)
        output = SCEGGOutput(
            logits=self.calibrated_stacking(self.gzsl_classifier(inputs)),
            czsl_logits=self.czsl_classifier(inputs),
            dense_features=dense,
            local_scores=raw["local_scores"],
            attentions=raw["attentions"] if output_attentions else None,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def calibrated_stacking(self, gzsl_scores: torch.Tensor) -> torch.Tensor:
        """GZSL scores with `config.seen_score_offset` subtracted from the seen classes (Chao et
        al., ECCV 2016), which trades seen accuracy for unseen accuracy; a no-op at 0."""
        offset = self.config.seen_score_offset
        if not offset:
            return gzsl_scores
        shift = torch.zeros(gzsl_scores.shape[-1], dtype=gzsl_scores.dtype, device=gzsl_scores.device)
        return gzsl_scores - shift.index_fill_(0, self.seen_class_ids, offset)

    @torch.no_grad()
    def synthesize(
        self,
        class_ids: Sequence[int] | torch.Tensor,
        num_per_class: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate `num_per_class` dense features for each class: G(eps, a_c) with the
        synthesis feedback weight a2. Returns (features (n * k, D), labels (n * k,))."""
        device = self.class_attributes.device
        class_ids = torch.as_tensor(class_ids, dtype=torch.long, device=device).flatten()
        if num_per_class < 1:
            raise ValueError(f"num_per_class must be >= 1, got {num_per_class}")
        bad = class_ids[(class_ids < 0) | (class_ids >= self.config.num_classes)]
        if bad.numel():
            raise ValueError(f"class_ids must lie in [0, {self.config.num_classes}), got {bad[:5].tolist()}")
        labels = class_ids.repeat_interleave(num_per_class)
        latent = _random(torch.randn, (len(labels), self.config.resolved_latent_dim), self.class_attributes, generator)
        eggn = self.eggn
        features = latent.new_empty(len(labels), self.config.feature_dim)
        for start in range(0, len(labels), _SYNTHESIS_CHUNK):  # bounds the (n, 4096) hidden layers
            rows = slice(start, start + _SYNTHESIS_CHUNK)
            features[rows] = generate_features(
                eggn.generator, eggn.decoder, eggn.feedback, latent[rows], self.class_attributes[labels[rows]],
                self.config.synthesis_feedback_weight,
            )
        return features, labels


_SIZE_FIELDS = ("feature_dim", "num_regions", "num_attributes", "word_dim", "num_classes",
                "num_unseen_classes", "classifier_input_dim", "resolved_sc_hidden_dim",
                "regression_hidden_dim", "resolved_latent_dim", "encoder_hidden_dim",
                "generator_hidden_dim", "critic_hidden_dim", "decoder_hidden_dim")


def _describe_size_mismatch(checkpoint, config: SCEGGConfig | None) -> str:
    """Name the sizes in which a checkpoint and the config it is loaded with disagree."""
    message = f"checkpoint {checkpoint} holds tensors of other sizes than the config it is loaded with"
    if config is None:
        return message
    saved = SCEGGConfig.from_pretrained(checkpoint)
    diffs = [f"{name}: checkpoint {getattr(saved, name)} vs config {getattr(config, name)}"
             for name in _SIZE_FIELDS if getattr(saved, name) != getattr(config, name)]
    return f"{message}: " + "; ".join(diffs) if diffs else message


def _checked_matrix(name: str, value, dtype: torch.dtype, rows: tuple[str, int], cols: tuple[str, int]) -> torch.Tensor:
    """A finite (rows, cols) tensor, or an error naming the expected and the received shape."""
    tensor = torch.as_tensor(value, dtype=dtype)
    expected = (rows[1], cols[1])
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{name} must have shape ({rows[0]}, {cols[0]}) = {expected}, got {tuple(tensor.shape)}")
    _check_finite(name, tensor)
    return tensor


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf values (shape {tuple(tensor.shape)})")


__all__ = [
    "SCEGGModel",
    "SCEGGOutput",
    "SCEGGPreTrainedModel",
    "generate_features",
    "reparameterize",
    "local_embedding_cross_entropy_eq6",
    "global_embedding_cross_entropy_eq7",
    "semantic_consistent_regression_loss_eq8",
    "tfvaegan_loss_eq9",
    "tfvaegan_vae_loss_eq10",
    "wgan_critic_loss_eq11",
    "gradient_penalty_eq11",
    "generator_adversarial_loss_eq11",
    "adapt_gradient_penalty_weight",
    "attribute_reconstruction_loss_eq12",
    "embedding_guided_synthesis_loss_eq13",
    "stage1_loss_eq16",
    "stage3_loss_eq18",
]
