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

Where each equation of the paper lives:

====  ===========================================================================================
Eq.   symbol
====  ===========================================================================================
1     `SCEGGLocalEmbeddingNetwork.attribute_attention` (attention over regions) and
      `.local_features` (h_n = sum_r a_nr r_r)
2     `SCEGGLocalEmbeddingNetwork.attribute_embedding` (e_l[n] = h_n^T W_beta v_n)
3     `SCEGGLocalEmbeddingNetwork.local_class_scores` (p_l)
4     `SCEGGSemanticCompression` (g = SC(h)); `SCEGGSemanticCompressionEmbeddingNetwork.compress`
      (the published attribute mean at runtime)
5     `SCEGGSemanticCompressionEmbeddingNetwork.global_classifier` (p_g = CLS_g(g), stage 1);
      `SCEGGRegressionHead` is the CLS_g that stage 2 fits and stage 3 is guided by
6     `local_embedding_cross_entropy_eq6` (L_LCE)
7     `global_embedding_cross_entropy_eq7` (L_GCE)
8     `semantic_consistent_regression_loss_eq8` (L_SCR)
9     `tfvaegan_loss_eq9` (L_VG)
10    `tfvaegan_vae_loss_eq10` (L_VAE)
11    `wgan_critic_loss_eq11`, `gradient_penalty_eq11`, `generator_adversarial_loss_eq11` (L_WGAN),
      with TF-VAEGAN's `adapt_gradient_penalty_weight`
12    `attribute_reconstruction_loss_eq12` (L_Rec)
13    `embedding_guided_synthesis_loss_eq13` (L_EGS)
14    `synthetic_seen_cross_entropy_eq14` (L_SCE)
15    `synthetic_unseen_cross_entropy_eq15` (L_UCE)
16    `stage1_loss_eq16` (L_S1)
17    `stage2_loss_eq17` (L_S2)
18    `stage3_loss_eq18` (L_S3)
====  ===========================================================================================
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
from transformers.backbone_utils import load_backbone
from transformers.utils import ModelOutput

from .configuration_scegg import SCEGGConfig

_SCALER_EPS = 1e-12
# Adam betas of TF-VAEGAN's generator, critic, decoder, feedback and final classifiers.
TFVAEGAN_BETAS = (0.5, 0.999)
_SYNTHESIS_CHUNK = 4096  # rows generated at once by `synthesize`


@dataclass
class SCEGGOutput(ModelOutput):
    """Predictions of SC-EGG for a batch of images.

    Args:
        loss: the cross entropy of `logits` against `labels` (GZSL, all classes), when labels are given.
        logits: (B, C) GZSL scores over all classes, in class-id order (calibrated by
            `config.seen_score_offset`).
        czsl_logits: (B, Cu) CZSL scores over the unseen classes, in `config.unseen_class_ids` order.
        dense_features: (B, D) the min-max scaled dense-semantic feature g the classifiers see.
        local_scores: (B, C) the LEN's class scores p_l (Eq. 3); None for the pooled baseline.
        attentions: (B, A, R) attribute attention over regions, with `output_attentions=True`.
        attribute_scores: (B, A) how strongly each attribute is seen, the LEN's e_l (Eq. 2), with
            `output_attribute_scores=True`; p_l = e_l . a(y) / |a(y)| (Eq. 3) is built from them.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    czsl_logits: torch.FloatTensor | None = None
    dense_features: torch.FloatTensor | None = None
    local_scores: torch.FloatTensor | None = None
    attentions: torch.FloatTensor | None = None
    attribute_scores: torch.FloatTensor | None = None


def _in_compute_dtype(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in the dtype autocast computes products in (itself outside autocast): cast once
    here rather than once per product that reads it."""
    device = tensor.device.type
    if tensor.is_floating_point() and torch.is_autocast_enabled(device):
        return tensor.to(torch.get_autocast_dtype(device))
    return tensor


def _leaky_relu_in_place(act: nn.LeakyReLU, tensor: torch.Tensor) -> torch.Tensor:
    """`act(tensor)` overwriting `tensor` (a fresh product nothing else reads): one pass over
    it instead of a second tensor of its size. Autograd recovers LeakyReLU's gradient from the
    output only for a non-negative slope; a negative one gets its own output tensor."""
    return F.leaky_relu(tensor, act.negative_slope, inplace=act.negative_slope >= 0)


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
        """Eq. 1's softmax: (B, R, D) L2-normalised regions -> (B, A, R) attention.

        The result is a transposed view of a contiguous (B, R, A) tensor: the logits are one
        (B R, D) x (D, A) product that reads the regions as they lie in memory (the (B, A, R)
        order would first copy all regions into (D, B R)), and the softmax runs over R there."""
        keys = self.attribute_queries @ self.attention_weight
        return torch.softmax(regions @ keys.t(), dim=1).transpose(1, 2)

    def local_features(self, attention: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Eq. 1: h_n, the attention-weighted sum of regions, (B, A, D)."""
        return attention @ regions

    def attribute_embedding(self, local_features: torch.Tensor) -> torch.Tensor:
        """Eq. 2: e_l[n] = h_n^T W_beta v_n, the visual-to-semantic embedding, (B, A)."""
        projections = self.attribute_queries @ self.embedding_weight
        return (local_features * projections.unsqueeze(0)).sum(-1)

    def attended_embedding(self, attention: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Eq. 2 without the local features: h_n^T W_beta v_n = sum_r a_nr r_r^T (W_beta^T v_n).

        One (B R, D) x (D, A) product replaces the (B, A, D) tensor h, which is the largest one
        of the LEN and costs as much memory traffic as the attention itself. The sum runs in the
        (B, R, A) order the product and `attribute_attention` lay out, so nothing is copied."""
        projections = self.attribute_queries @ self.embedding_weight
        return (attention.transpose(1, 2) * (regions @ projections.t())).sum(1)

    @staticmethod
    def local_class_scores(embedding: torch.Tensor, class_attributes: torch.Tensor) -> torch.Tensor:
        """Eq. 3: p_l = e_l . a(y) against L2-normalised class attribute vectors, (B, C)."""
        return embedding @ F.normalize(class_attributes, dim=-1).t()

    def attend(
        self, region_features: torch.Tensor, class_attributes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 1-3 as training and inference run them: normalised regions (B, R, D), attention
        (B, A, R) and p_l (B, C), never forming h; `forward` is the same maths with h explicit."""
        regions = _in_compute_dtype(F.normalize(region_features, dim=-1))
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
        scores = self.local_class_scores(self.attribute_embedding(local), class_attributes)
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
        hidden = _leaky_relu_in_place(act, self._first_layer(first, attention, regions))
        batch, width = hidden.shape[:2]
        return torch.bmm(second.weight.expand(batch, 1, width), hidden).squeeze(-2) + second.bias

    @staticmethod
    def _first_layer(first: nn.Linear, attention: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """W_1 h + b_1 = [W_1 attention | b_1] [regions; 1], (B, hidden, D): the bias rides in the
        product as one more region of ones, so neither its broadcast add nor its gradient's sum
        makes an extra pass over the (B, hidden, D) tensor, the largest of stage 1.
        `attention @ W_1^T` is one (B R, A) x (A, hidden) product on the (B, R, A) layout."""
        batch, _, feature_dim = regions.shape
        mixed = attention.transpose(1, 2) @ first.weight.t()
        mixed = torch.cat([mixed, first.bias.to(mixed.dtype).expand(batch, 1, -1)], dim=1)
        regions = torch.cat([regions, regions.new_ones(batch, 1, feature_dim)], dim=1)
        return torch.bmm(mixed.transpose(1, 2), regions.to(mixed.dtype))

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
    return (lambda_s * synthetic_seen_cross_entropy_eq14(seen_scores, seen_labels)
            + lambda_u * synthetic_unseen_cross_entropy_eq15(unseen_scores, unseen_labels))


def synthetic_seen_cross_entropy_eq14(seen_scores: torch.Tensor, seen_labels: torch.Tensor) -> torch.Tensor:
    """L_SCE (Eq. 14): cross entropy of CLS_g on synthetic seen features, softmax over all classes."""
    return F.cross_entropy(seen_scores, seen_labels)


def synthetic_unseen_cross_entropy_eq15(unseen_scores: torch.Tensor, unseen_labels: torch.Tensor) -> torch.Tensor:
    """L_UCE (Eq. 15): the same for synthetic features of unseen classes, which have no real
    images: the only signal that ties their synthesis to what CLS_g learnt from the LEN."""
    return F.cross_entropy(unseen_scores, unseen_labels)


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


def stage2_loss_eq17(global_scores: torch.Tensor, local_scores: torch.Tensor, reduction: str = "mse") -> torch.Tensor:
    """L_S2 (Eq. 17) = L_SCR: stage 2 trains only the regression head, against the frozen LEN."""
    return semantic_consistent_regression_loss_eq8(global_scores, local_scores, reduction)


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
    # a checkpoint with an embedded backbone still loads as SCEGGModel, which reads region features
    _keys_to_ignore_on_load_unexpected = [r"^backbone\."]
    # checkpoints saved before the refit statistics existed load with none (add_classes then says so)
    _keys_to_ignore_on_load_missing = [r"^seen_feature_(mean|std|count)$"]

    # Set by the installed `scegg` package (its `export` module) when it registers the classes:
    # save_pretrained / push_to_hub then write the complete folder (image processor, pipelines,
    # model card). Remote code loaded from a folder has none and saves weights, config and code.
    package_export = None

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The complete model folder when the package is installed (see `package_export`), else
        `save_weights_and_code`."""
        export = SCEGGPreTrainedModel.package_export
        if export is not None:
            return export.save_model(self, save_directory, **kwargs)
        return self.save_weights_and_code(save_directory, *args, **kwargs)

    def push_to_hub(self, repo_id, *args, **kwargs):
        """With the package installed, the complete folder and a card written for `repo_id`;
        else `PreTrainedModel.push_to_hub`."""
        export = SCEGGPreTrainedModel.package_export
        if export is not None:
            return export.push_model_to_hub(self, repo_id, *args, **kwargs)
        return super().push_to_hub(repo_id, *args, **kwargs)

    def save_weights_and_code(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; once the classes are registered for remote code, the
        saved auto_map names both: AutoModel (region features in) and AutoModelForImageClassification
        (pictures in), whichever of the two is saved."""
        if self._auto_class is not None:
            module = type(self).__module__.split(".")[-1]
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                    "AutoModel": f"{module}.SCEGGModel",
                                    "AutoModelForImageClassification": f"{module}.SCEGGForImageClassification"}
        return super().save_pretrained(save_directory, *args, **kwargs)

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
            for name in ("seen_feature_mean", "seen_feature_std", "seen_feature_count"):
                init.zeros_(getattr(module, name))


class SCEGGModel(SCEGGPreTrainedModel):
    """SC-EGG with its SCEN, EGGN and final GZSL / CZSL classifiers.

    Class semantics (attribute matrix, word vectors) are persistent buffers, class names live in
    `config.id2label`, and the min-max scaler is part of the SCEN, so a saved checkpoint alone
    restores a model that predicts. Per-class statistics of the real seen dense features (mean,
    std, count) are kept too, so `add_classes` can refit the classifiers without the training data.
    """

    def __init__(self, config: SCEGGConfig):
        super().__init__(config)
        self.scen = SCEGGSemanticCompressionEmbeddingNetwork(config)
        self.eggn = SCEGGEmbeddingGuidedGenerativeNetwork(config)
        self.gzsl_classifier = SCEGGLinearClassifier(config.classifier_input_dim, config.num_classes)
        self.czsl_classifier = SCEGGLinearClassifier(config.classifier_input_dim, config.num_unseen_classes)
        self.register_buffer("class_attributes", torch.zeros(config.num_classes, config.num_attributes))
        num_seen = config.num_seen_classes
        self.register_buffer("seen_feature_mean", torch.zeros(num_seen, config.feature_dim))
        self.register_buffer("seen_feature_std", torch.zeros(num_seen, config.feature_dim))
        self.register_buffer("seen_feature_count", torch.zeros(num_seen, dtype=torch.long))
        self._init_backbone(config)
        self.post_init()

    def _init_backbone(self, config: SCEGGConfig) -> None:
        """SCEGGModel reads region features; SCEGGForImageClassification adds its ResNet here,
        before `post_init` collects the sub-models' loading rules."""

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
        output_attribute_scores: bool = False,
    ) -> SCEGGOutput | tuple[torch.Tensor, ...]:
        """Classify images from their region features (B, R, D); `output_attribute_scores` adds e_l
        (one extra (B R, D) x (D, A) product, only when asked)."""
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
            attribute_scores=self.attribute_scores(regions, raw["attentions"]) if output_attribute_scores else None,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def attribute_scores(self, region_features: torch.Tensor, attention: torch.Tensor | None) -> torch.Tensor:
        """e_l (B, A) of Eq. 2 for region features and their attention; the pooled-feature
        baseline has no SCEN, hence no attribute scores."""
        if attention is None:
            raise ValueError("this model has no SCEN (dense_feature_source='pooled'), so it has no attribute scores")
        return self.scen.local_embedding.attended_embedding(attention, F.normalize(region_features, dim=-1))

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


    # -- new classes after training ----------------------------------------------------------------
    @torch.no_grad()
    def record_refit_data(self, features: torch.Tensor, labels: torch.Tensor, num_synthetic: int,
                          epochs: Sequence[int], lr: float) -> None:
        """Keep what `add_classes` needs to refit the final classifiers without the training data:
        the mean, std and count of the scaled real dense features (N, D) of every seen class, and
        the classifier recipe of training (synthetic features per class, GZSL / CZSL epochs, lr)."""
        features = features.to(self.seen_feature_mean)
        labels = torch.as_tensor(labels, device=features.device)
        for row, class_id in enumerate(self.config.seen_class_ids):
            own = features[labels == class_id]
            if not len(own):
                raise ValueError(f"no real features of seen class {class_id} ({self.config.id2label[class_id]})")
            self.seen_feature_mean[row] = own.mean(0)
            self.seen_feature_std[row] = own.std(0, unbiased=False)
            self.seen_feature_count[row] = len(own)
        self.config.refit_num_synthetic, self.config.refit_lr = int(num_synthetic), float(lr)
        self.config.refit_epochs = [int(e) for e in epochs]

    def add_classes(
        self,
        names: Sequence[str],
        attributes: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Add classes nobody labelled, from their attributes (n, A) in the dataset's attribute space
        (rows are L2-normalised, as at training): they become unseen classes with the next ids,
        the generator synthesises their features, and both final classifiers are refit
        (`refit_classifiers`). The SCEN and the EGGN are not retrained. Returns the new ids."""
        attributes = self._new_class_attributes(names, attributes)
        config, first = self.config, self.config.num_classes
        new_ids = list(range(first, first + len(names)))
        self._extend_class_heads(attributes)
        config.num_classes = first + len(names)
        config.unseen_class_ids = list(config.unseen_class_ids) + new_ids
        config.id2label = {**{int(k): v for k, v in config.id2label.items()}, **dict(zip(new_ids, names))}
        config.label2id = {name: class_id for class_id, name in config.id2label.items()}
        self.refit_classifiers(generator)
        return new_ids

    def _new_class_attributes(self, names: Sequence[str], attributes) -> torch.Tensor:
        if not self.has_refit_data:
            raise ValueError("this checkpoint stores no statistics of the real seen features (it was saved before "
                             "they were recorded): retrain it to add classes")
        existing = set(self.config.id2label.values())
        clash = sorted({n for n in names if n in existing} | {n for n in names if list(names).count(n) > 1})
        if not names or clash:
            raise ValueError(f"new class names must be new and distinct, got {list(names)[:8]} (clashing: {clash[:8]})")
        cfg = self.config
        rows = _checked_matrix("attributes", attributes, self.class_attributes.dtype,
                               ("new classes", len(names)), ("num_attributes", cfg.num_attributes))
        zero = (rows.norm(dim=-1) == 0).nonzero().flatten().tolist()
        if zero:
            raise ValueError(f"new classes {[names[i] for i in zero]} have all-zero attributes")
        return F.normalize(rows, dim=-1).to(self.class_attributes.device)

    @torch.no_grad()
    def _extend_class_heads(self, new_attributes: torch.Tensor) -> None:
        """Every tensor with a row per class grows: the attribute matrix, and the SCEN's CLS_g and
        regression heads, whose new rows follow the classes' attributes (see
        `extend_rows_through_attributes`). The final classifiers are rebuilt by the refit."""
        old_attributes = self.class_attributes
        scen = self.scen
        scen.global_classifier = extend_rows_through_attributes(scen.global_classifier, old_attributes, new_attributes)
        scen.regression_head.net[2] = extend_rows_through_attributes(scen.regression_head.net[2], old_attributes,
                                                                     new_attributes)
        self.class_attributes = torch.cat([old_attributes, new_attributes])

    def refit_classifiers(self, generator: torch.Generator | None = None) -> None:
        """Retrain both final classifiers from scratch, as the last training stage does, without
        the training data: real seen features are drawn from the recorded per-class statistics
        (as many per class as training had, clipped to the scaler's [0, 1]), synthetic ones come
        from the generator (`refit_num_synthetic` per unseen class)."""
        cfg, device = self.config, self.class_attributes.device
        with torch.no_grad():
            counts = self.seen_feature_count.tolist()
            rows = torch.arange(len(counts), device=device).repeat_interleave(self.seen_feature_count.to(device))
            noise = _random(torch.randn, (len(rows), cfg.feature_dim), self.seen_feature_mean, generator)
            seen_x = (self.seen_feature_mean[rows] + self.seen_feature_std[rows] * noise).clamp(0.0, 1.0)
            seen_y = self.seen_class_ids[rows]
            syn_x, syn_y = self.synthesize(cfg.unseen_class_ids, cfg.refit_num_synthetic, generator=generator)
            gzsl_x = self.classifier_inputs([seen_x, syn_x])
        unseen = self.unseen_class_ids
        check_unseen_order(unseen)
        gzsl_epochs, czsl_epochs = cfg.refit_epochs
        self.gzsl_classifier = self._new_classifier(cfg.num_classes)
        self.czsl_classifier = self._new_classifier(cfg.num_unseen_classes)
        fit_linear_classifier(self.gzsl_classifier, gzsl_x, torch.cat([seen_y, syn_y]), gzsl_epochs, cfg.refit_lr,
                              cfg.refit_num_synthetic, generator)
        fit_linear_classifier(self.czsl_classifier, gzsl_x[len(seen_x):], torch.searchsorted(unseen, syn_y), czsl_epochs,
                              cfg.refit_lr, cfg.refit_num_synthetic, generator)

    @property
    def has_refit_data(self) -> bool:
        return bool(self.seen_feature_count.sum() > 0)

    @torch.no_grad()
    def classifier_inputs(self, parts: Sequence[torch.Tensor], dtype: torch.dtype = torch.float32,
                          chunk: int = 4096) -> torch.Tensor:
        """The final classifiers' inputs (`classifier_features`) for the rows of all `parts`, on
        the CPU, chunk by chunk into one preallocated tensor of `dtype` (concatenating chunks or
        parts would hold every row twice: at CUB size ~0.4 GB more). The training stage and the
        add-classes refit both build their classifiers' inputs here."""
        device = self.class_attributes.device
        out = torch.empty(sum(len(part) for part in parts), self.config.classifier_input_dim, dtype=dtype)
        start = 0
        for part in parts:
            for i in range(0, len(part), chunk):
                rows = self.classifier_features(part[i:i + chunk].to(device))
                out[start:start + len(rows)] = rows.cpu()
                start += len(rows)
        return out

    def _new_classifier(self, num_classes: int) -> SCEGGLinearClassifier:
        classifier = SCEGGLinearClassifier(self.config.classifier_input_dim, num_classes)
        self._init_weights(classifier.fc)
        return classifier.to(self.class_attributes)


@torch.no_grad()
def extend_rows_through_attributes(layer: nn.Linear, old_attributes: torch.Tensor, new_attributes: torch.Tensor) -> nn.Linear:
    """A class-score layer (C outputs) with rows for new classes: each trained row (weights and
    bias) is fitted, by least squares, as one linear function of its class's attribute vector,
    and a new class gets that function of its own attributes. The stage-2 head regresses the
    local scores p_l = e_l . a(y) (Eq. 3), which are linear in the class attributes, so this is
    the row it would have learnt; the trained rows stay as they were."""
    rows = torch.cat([layer.weight, layer.bias[:, None]], dim=1)
    mapping = torch.linalg.lstsq(old_attributes.double(), rows.double()).solution
    new_rows = (new_attributes.double() @ mapping).to(rows.dtype)
    grown = nn.Linear(layer.in_features, layer.out_features + len(new_attributes)).to(rows)
    grown.weight.copy_(torch.cat([layer.weight, new_rows[:, :-1]]))
    grown.bias.copy_(torch.cat([layer.bias, new_rows[:, -1]]))
    return grown


# -- the final classifiers' recipe: the training stage and the add-classes refit share it --------
def check_unseen_order(unseen_class_ids: torch.Tensor) -> None:
    """The CZSL head's outputs follow `config.unseen_class_ids`; training maps labels through the
    sorted ids, so the config must list them sorted (the data loaders do)."""
    if not torch.equal(unseen_class_ids, unseen_class_ids.sort().values):
        raise ValueError(f"config.unseen_class_ids must be sorted, got {unseen_class_ids.tolist()[:10]}")


def adam(params, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """torch's Adam in its fused form where the parameters' device has one (CPU, CUDA): one
    kernel per tensor instead of a dozen passes over it, the same update. For the 4096-wide
    TF-VAEGAN layers the unfused update costs more than a critic step's matrix products on a CPU
    (5x slower than fused in the package's stage benchmark). Every Adam of training and of the
    add-classes refit is this one."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused)


def classifier_optimizer(params, lr: float) -> torch.optim.Adam:
    """TF-VAEGAN's final-classifier optimizer: `adam` with betas (0.5, 0.999)."""
    return adam(params, lr, TFVAEGAN_BETAS)


def classifier_epoch(
    classifier: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    step: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | None = None,
    rank: int = 0,
    world: int = 1,
) -> torch.Tensor:
    """One epoch of a final classifier: cross entropy on the mini-batches of `inputs` in `order`,
    each loss handed to `step` (backward, optimizer step; returns the detached loss). With several
    processes each takes its share of every batch. Returns the mean loss, on the device."""
    losses = []
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        if len(batch) < world:  # too short to give every process a sample: all skip it alike
            continue
        batch = batch[rank::world]
        losses.append(step(F.cross_entropy(classifier(inputs[batch].to(device)), labels[batch].to(device))))
    return torch.stack(losses).mean()


def fit_linear_classifier(
    classifier: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> None:
    """The final-classifier recipe of the training stage on one process, for a fixed number of
    epochs: `classifier_optimizer`, `classifier_epoch` on an order drawn from `generator`."""
    optimizer = classifier_optimizer(classifier.parameters(), lr)
    device = next(classifier.parameters()).device

    def step(loss: torch.Tensor) -> torch.Tensor:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    classifier.train()
    with torch.enable_grad():
        for _ in range(epochs):
            order = _random(torch.rand, (len(inputs),), inputs, generator).argsort()
            classifier_epoch(classifier, inputs, labels, order, batch_size, step, device)
    classifier.eval()


class SCEGGForImageClassification(SCEGGModel):
    """SC-EGG on pictures: the ResNet region backbone described by `config.backbone_config` turns
    `pixel_values` into the (B, R, D) region features the model was trained on, then the SCEN and
    the classifiers of SCEGGModel run on them. Region features stay an accepted input (training
    and evaluation keep their cached fast path); the backbone's weights live in the same
    checkpoint under `backbone.`."""

    main_input_name = "pixel_values"

    def _init_backbone(self, config: SCEGGConfig) -> None:
        self.backbone = load_backbone(config) if config.backbone_config is not None else None
        if self.backbone is not None and self.backbone.channels[-1] != config.feature_dim:
            raise ValueError(f"the backbone's last stage has {self.backbone.channels[-1]} channels but the model "
                             f"reads region features of feature_dim={config.feature_dim}")

    def pixel_region_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels -> (B, R, D): the last backbone stage's map, regions row-major over
        it, exactly as region features are extracted and stored for training."""
        if self.backbone is None:
            raise ValueError(
                "this checkpoint has no region backbone (config.backbone_config is None): it classifies region "
                "features. Embed the backbone its features came from with `scegg attach-backbone MODEL WEIGHTS "
                "--output DIR`, or pass region_features"
            )
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a tensor of shape (batch, 3, height, width), got {shape}")
        dtype = next(self.backbone.parameters()).dtype
        feature_map = self.backbone(pixel_values.to(dtype)).feature_maps[-1]
        regions = feature_map.flatten(2).transpose(1, 2)
        if regions.shape[1] != self.config.num_regions:
            raise ValueError(
                f"pixel_values of shape {tuple(pixel_values.shape)} give a {feature_map.shape[2]} x {feature_map.shape[3]} "
                f"map = {regions.shape[1]} regions, but the model was trained on num_regions={self.config.num_regions}: "
                f"preprocess images with the model's own image processor (AutoImageProcessor)"
            )
        return regions

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        region_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
        return_dict: bool | None = None,
        output_attribute_scores: bool = False,
    ) -> SCEGGOutput | tuple[torch.Tensor, ...]:
        """Classify images from `pixel_values` (B, 3, H, W) or their `region_features` (B, R, D);
        `labels` (B,) class ids add the GZSL cross entropy as `loss`."""
        if (pixel_values is None) == (region_features is None):
            raise ValueError("pass exactly one of pixel_values (B, 3, H, W) and region_features (B, R, D)")
        if pixel_values is not None:
            region_features = self.pixel_region_features(pixel_values)
        output = super().forward(region_features, output_attentions=output_attentions, return_dict=True,
                                 output_attribute_scores=output_attribute_scores)
        if labels is not None:
            output = SCEGGOutput(loss=gzsl_cross_entropy(output.logits, labels), **output)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


def gzsl_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The final GZSL classifier's objective (cross entropy over all classes), for labelled images."""
    labels = torch.as_tensor(labels, device=logits.device).long().flatten()
    if labels.shape[0] != logits.shape[0] or ((labels < 0) | (labels >= logits.shape[-1])).any():
        raise ValueError(f"labels must be {logits.shape[0]} class ids in [0, {logits.shape[-1]}), got {labels.tolist()[:8]}")
    return F.cross_entropy(logits, labels)


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
    "SCEGGForImageClassification",
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
    "extend_rows_through_attributes",
    "fit_linear_classifier",
    "gzsl_cross_entropy",
    "stage1_loss_eq16",
    "stage2_loss_eq17",
    "stage3_loss_eq18",
    "synthetic_seen_cross_entropy_eq14",
    "synthetic_unseen_cross_entropy_eq15",
]

# Imported from the installed package (not as a model folder's remote code, whose package is
# transformers'): the Auto classes and the package's folder writer are registered here too, so
# `from modeling_scegg.modeling_scegg import SCEGGModel` behaves as `modeling_scegg.SCEGGModel`.
if __package__ == "modeling_scegg":
    import importlib

    importlib.import_module(__package__).register_auto_classes()
