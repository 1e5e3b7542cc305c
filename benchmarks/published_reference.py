"""The published SC-EGG training procedure in plain PyTorch: the reference that bench_stages.py
times side by side with the package.

Written from the authors' code (HHHZM/SC-EGG: `train_SUN.py`, `models/Attention.py` (DAZLE),
`models/VAEGAN.py`, `models/utils.py`, `models/classifier_images.py`), not from this package, so
it measures what a user of that code pays for the same work:

* region features live in RAM as float32 (N, D, R) tensors, as the published data loader holds
  the HDF5 `feature_map`; batches are indexed out of them;
* batches come from the published class-balanced `next_seen_batch` (NumPy's global RNG);
* the networks and every step are the published ones, including the work the published code
  does and throws away (the attribute attention A_p of DAZLE's forward, the graphs of the
  critic steps' encoder / generator passes, the reference CE on real features in the generator
  step);
* stage 2 runs the frozen DAZLE on region features twice per step (its dense feature, then its
  full forward for the local scores), and stage 3 recomputes the dense feature g from region
  features for every batch, critic steps included, as `train_SUN.py` does.

Left out, so that the reference only ever does less than the published code: the periodic
test-set evaluations (every 100 iterations in stages 1-2; the GZSL / CZSL classifiers after
every stage-3 epoch with a validation pass after every classifier epoch). The classifiers are
trained once, after the last stage-3 epoch, and their last epoch is scored, which is the
package's honest protocol.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modeling_scegg.data import RegionFeatureReader, ZSLDataset
from modeling_scegg.evaluation.metric import harmonic_mean, mean_per_class_accuracy


# ----------------------------------------------------------------------------------------------
# Data as the published loader holds it
# ----------------------------------------------------------------------------------------------
@dataclass
class ReferenceData:
    """Splits as float32 (N, D, R) tensors in RAM (batches go to `device` as they are drawn, as
    the published loader does), plus the class semantics (on `device`)."""

    features: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    attributes: torch.Tensor
    word_vectors: torch.Tensor
    seen: torch.Tensor
    unseen: torch.Tensor
    device: torch.device = torch.device("cpu")

    @property
    def feature_dim(self) -> int:
        return int(self.features["train"].shape[1])


def load_reference_data(data: ZSLDataset, device: str | torch.device = "cpu", chunk: int = 512) -> ReferenceData:
    """Read every split into RAM, transposed to the published (N, D, R) layout."""
    features, labels = {}, {}
    for split in ("train", "test_seen", "test_unseen"):
        reader = RegionFeatureReader(data.splits[split])
        parts = [torch.from_numpy(x).float().transpose(1, 2).contiguous() for x, _ in reader.iter_batches(chunk)]
        features[split] = torch.cat(parts)
        labels[split] = torch.from_numpy(np.asarray(reader.labels, dtype=np.int64))
    sem, device = data.semantics, torch.device(device)
    return ReferenceData(features=features, labels={k: v.to(device) for k, v in labels.items()},
                         attributes=torch.from_numpy(sem.attributes).float().to(device),
                         word_vectors=torch.from_numpy(sem.word_vectors).float().to(device),
                         seen=torch.from_numpy(np.unique(labels["train"].numpy())).to(device),
                         unseen=torch.from_numpy(np.unique(labels["test_unseen"].numpy())).to(device), device=device)


class SeenBatches:
    """The published balanced `next_seen_batch`: min(Cs, B) distinct seen classes, B // Cs images
    each (at least one, drawn with replacement), from NumPy's global generator."""

    def __init__(self, data: ReferenceData):
        labels = data.labels["train"].cpu().numpy()
        self.per_class = [np.flatnonzero(labels == c) for c in data.seen.cpu().numpy()]
        self.data = data

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        count = len(self.per_class)
        per = max(batch_size // count, 1)
        chosen = np.random.choice(np.arange(count), min(count, batch_size), replace=False).tolist()
        idx = torch.from_numpy(np.concatenate([np.random.choice(self.per_class[c], per) for c in chosen]))
        labels = self.data.labels["train"][idx.to(self.data.device)]
        return labels, self.data.features["train"][idx].to(self.data.device), self.data.attributes[labels]


# ----------------------------------------------------------------------------------------------
# Stage 1 / 2 networks (DAZLE with the SC-EGG compose heads)
# ----------------------------------------------------------------------------------------------
class PublishedDAZLE(nn.Module):
    """DAZLE as configured by train_SUN.py: trainable V, normalised regions, uniform A_p,
    an 'mlp' compose head for training and 'avg' at runtime, and a min-max scaler."""

    def __init__(self, data: ReferenceData):
        super().__init__()
        num_attributes, word_dim = data.word_vectors.shape
        dim_f, num_classes = data.feature_dim, data.attributes.shape[0]
        self.V = nn.Parameter(F.normalize(data.word_vectors.clone()))
        self.W_1 = nn.Parameter(nn.init.normal_(torch.empty(word_dim, dim_f)))
        self.W_2 = nn.Parameter(torch.zeros(word_dim, dim_f))
        self.W_3 = nn.Parameter(torch.zeros(word_dim, dim_f))
        self.mlp_compose = nn.Sequential(nn.Linear(num_attributes, num_attributes // 2), nn.LeakyReLU(),
                                         nn.Linear(num_attributes // 2, 1))
        self.compose_cls = nn.Sequential(nn.Linear(dim_f, num_classes))
        self.register_buffer("att", F.normalize(data.attributes.clone()))
        self.register_buffer("scale_min", torch.zeros(dim_f))
        self.register_buffer("scale_max", torch.ones(dim_f))

    def extract_attention(self, Fs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Fs = F.normalize(Fs, dim=1)
        A = F.softmax(torch.einsum("iv,vf,bfr->bir", self.V, self.W_2, Fs), dim=-1)
        return A, torch.einsum("bir,bfr->bif", A, Fs)

    def compose(self, Hs: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "avg":
            g = F.adaptive_avg_pool1d(Hs.permute(0, 2, 1), 1).squeeze(-1)
        else:
            g = self.mlp_compose(Hs.permute(0, 2, 1)).squeeze(-1)
        return (g - self.scale_min) / (self.scale_max - self.scale_min)

    def pooled_features(self, Fs: torch.Tensor) -> torch.Tensor:
        """`extract_pooling_attributes_features(Fs, 'avg')`: the runtime dense feature g."""
        return self.compose(self.extract_attention(Fs)[1], "avg")

    def forward(self, Fs: torch.Tensor) -> dict[str, torch.Tensor]:
        _, Hs = self.extract_attention(Fs)
        S_p = torch.einsum("iv,vf,bif->bi", self.V, self.W_1, Hs)
        A_p = torch.sigmoid(torch.einsum("iv,vf,bif->bi", self.V, self.W_3, Hs))
        ones = self.att.new_full(S_p.shape, fill_value=1)
        local = torch.einsum("ki,bi,bi->bik", self.att, ones, S_p).sum(dim=1)
        return {"local_cls_embed": local, "global_cls_embed": self.compose_cls(self.compose(Hs, "mlp")), "A_p": A_p}


def published_cross_entropy(scores: torch.Tensor, labels: torch.Tensor, subset: torch.Tensor | None) -> torch.Tensor:
    """DAZLE's `compute_aug_cross_entropy`: log-softmax against one-hot rows, optionally over a
    class subset (the seen classes: 'non-conservative')."""
    onehot = torch.eye(scores.shape[1], device=scores.device)[labels]
    if subset is not None:
        scores, onehot = scores[:, subset], onehot[:, subset]
    return torch.mean(-torch.einsum("bk,bk->b", F.log_softmax(scores, dim=1), onehot))


def regression_head(feature_dim: int, num_classes: int) -> nn.Module:
    """`SCEN.ft_compose_cls`: the stage-2 global classifier."""
    return nn.Sequential(nn.Linear(feature_dim, 1024), nn.LeakyReLU(), nn.Linear(1024, num_classes))


# ----------------------------------------------------------------------------------------------
# Stage 3 networks (TF-VAEGAN, models/VAEGAN.py)
# ----------------------------------------------------------------------------------------------
def _weights_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(0.0, 0.02)
        module.bias.data.fill_(0)


class PublishedEncoder(nn.Module):
    def __init__(self, dim_f: int, num_attributes: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim_f + num_attributes, hidden)
        self.fc3 = nn.Linear(hidden, num_attributes * 2)
        self.lrelu = nn.LeakyReLU(0.2, True)
        self.linear_means = nn.Linear(num_attributes * 2, num_attributes)
        self.linear_log_var = nn.Linear(num_attributes * 2, num_attributes)
        self.apply(_weights_init)

    def forward(self, x, c):
        x = self.lrelu(self.fc3(self.lrelu(self.fc1(torch.cat((x, c), dim=-1)))))
        return self.linear_means(x), self.linear_log_var(x)


class PublishedGenerator(nn.Module):
    def __init__(self, dim_f: int, num_attributes: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(num_attributes * 2, hidden)
        self.fc3 = nn.Linear(hidden, dim_f)
        self.lrelu = nn.LeakyReLU(0.2, True)
        self.apply(_weights_init)

    def forward(self, z, a1=None, c=None, feedback_layers=None):
        x1 = self.lrelu(self.fc1(torch.cat((z, c), dim=-1)))
        if feedback_layers is not None:
            x1 = x1 + a1 * feedback_layers
        return torch.sigmoid(self.fc3(x1))


class PublishedCritic(nn.Module):
    def __init__(self, dim_f: int, num_attributes: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim_f + num_attributes, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        self.lrelu = nn.LeakyReLU(0.2, True)
        self.apply(_weights_init)

    def forward(self, x, att):
        return self.fc2(self.lrelu(self.fc1(torch.cat((x, att), 1))))


class PublishedAttDec(nn.Module):
    def __init__(self, dim_f: int, num_attributes: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim_f, hidden)
        self.fc3 = nn.Linear(hidden, num_attributes)
        self.lrelu = nn.LeakyReLU(0.2, True)
        self.hidden = None
        self.apply(_weights_init)

    def forward(self, feat):
        self.hidden = self.lrelu(self.fc1(feat))
        h = self.fc3(self.hidden)
        return h / h.pow(2).sum(1).sqrt().unsqueeze(1).expand(h.size(0), h.size(1))

    def getLayersOutDet(self):
        return self.hidden.detach()


class PublishedFeedback(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.lrelu = nn.LeakyReLU(0.2, True)
        self.apply(_weights_init)

    def forward(self, x):
        return self.lrelu(self.fc2(self.lrelu(self.fc1(x))))


def vae_loss(recon_x, x, mean, log_var):
    bce = F.binary_cross_entropy(recon_x + 1e-12, x.detach(), reduction="sum").sum() / x.size(0)
    kld = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp()) / x.size(0)
    return bce + kld


def weighted_l1(pred, gt):
    wt = (pred - gt).pow(2)
    wt /= wt.sum(1).sqrt().unsqueeze(1).expand(wt.size(0), wt.size(1))
    return (wt * (pred - gt).abs()).sum() / wt.size(0)


def gradient_penalty(critic, real, fake, att, lambda1):
    alpha = torch.rand(real.shape[0], 1, device=real.device).expand(real.size())
    interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = critic(interpolates, att)
    (grad,) = torch.autograd.grad(out, interpolates, grad_outputs=torch.ones(out.size(), device=out.device), create_graph=True,
                                  retain_graph=True, only_inputs=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean() * lambda1


# ----------------------------------------------------------------------------------------------
# Settings and the trainers
# ----------------------------------------------------------------------------------------------
@dataclass
class ReferenceSettings:
    """The published code's knobs, filled from the package's run settings so both do the same work."""

    stage1_iters: int = 2000
    stage2_iters: int = 4000
    stage3_epochs: int = 300
    batch_size: int = 64
    lr: float = 1e-4
    dec_lr: float = 1e-4
    feed_lr: float = 1e-4
    gamma_d: float = 10.0
    gamma_g: float = 10.0
    lambda1: float = 10.0
    recons_weight: float = 0.01
    lambda_s: float = 0.1
    lambda_u: float = 0.1
    a1: float = 1.0
    a2: float = 1.0
    critic_iters: int = 5
    syn_num: int = 300
    classifier_lr: float = 1e-3
    classifier_epochs: int = 25
    freeze_dec: bool = False
    hidden: int = 4096

    @classmethod
    def from_run(cls, args, config) -> "ReferenceSettings":
        """From `SCEGGTrainingArguments` and `SCEGGConfig` (the preset both implementations run)."""
        return cls(stage1_iters=args.stage1_iters, stage2_iters=args.stage2_iters, stage3_epochs=args.stage3_epochs,
                   batch_size=args.batch_size, lr=args.stage3_lr,
                   dec_lr=getattr(args, "decoder_lr", None) or args.stage3_lr, feed_lr=args.feedback_lr or args.stage3_lr,
                   gamma_d=config.gamma_d, gamma_g=config.gamma_g, lambda1=config.gp_lambda,
                   recons_weight=config.lambda_r, lambda_s=config.lambda_s, lambda_u=config.lambda_u,
                   a1=config.feedback_weight, a2=config.synthesis_feedback_weight, critic_iters=args.critic_iters,
                   syn_num=args.syn_num, classifier_lr=args.classifier_lr, classifier_epochs=args.classifier_epochs,
                   freeze_dec=config.freeze_decoder, hidden=config.generator_hidden_dim)


class Stage1:
    """Stage 1 of train_SUN.py: DAZLE trained with local + global CE over the seen classes."""

    def __init__(self, data: ReferenceData, settings: ReferenceSettings):
        self.data, self.settings, self.batches = data, settings, SeenBatches(data)
        self.net = PublishedDAZLE(data).to(data.device)
        self.optimizer = torch.optim.RMSprop(self.net.parameters(), lr=0.0001, weight_decay=0.0001, momentum=0.9)

    def step(self) -> torch.Tensor:
        self.net.train()
        self.optimizer.zero_grad()
        labels, features, _ = self.batches(self.settings.batch_size)
        out = self.net(features)
        loss = (published_cross_entropy(out["local_cls_embed"], labels, self.data.seen)
                + published_cross_entropy(out["global_cls_embed"], labels, self.data.seen))
        loss.backward()
        self.optimizer.step()
        return loss

    @torch.no_grad()
    def fit_scaler(self) -> None:
        """The min-max pass over the training features, in batches of 64 as published."""
        g = torch.cat([self.net.pooled_features(x.to(self.data.device))
                       for x in self.data.features["train"].split(self.settings.batch_size)])
        self.net.scale_min.copy_(g.min(dim=0).values)
        self.net.scale_max.copy_(g.max(dim=0).values)


class Stage2:
    """Stage 2 (the SCEN class of train_SUN.py): a frozen copy of DAZLE, and a new head trained
    with MSE against its local scores; the DAZLE runs on region features at every step."""

    def __init__(self, stage1: Stage1):
        self.data, self.settings = stage1.data, stage1.settings
        self.net = PublishedDAZLE(self.data).to(self.data.device)
        self.net.load_state_dict(stage1.net.state_dict())
        self.net.requires_grad_(False)
        self.head = regression_head(self.data.feature_dim, self.data.attributes.shape[0]).to(self.data.device)
        params = list(self.net.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.RMSprop(params, lr=0.0001, weight_decay=0.0001, momentum=0.9)
        self.batches = stage1.batches

    def step(self) -> torch.Tensor:
        self.head.train()
        self.optimizer.zero_grad()
        labels, features, _ = self.batches(self.settings.batch_size)
        f_global = self.net.pooled_features(features)
        package = self.net(features)
        cls_out = self.head(f_global)
        loss = F.mse_loss(cls_out, package["local_cls_embed"], reduction="mean")
        published_cross_entropy(cls_out, labels, self.data.seen)  # loss_CE1 / loss_CE2: logged, not trained
        published_cross_entropy(cls_out, labels, None)
        loss.backward()
        self.optimizer.step()
        return loss


@torch.no_grad()
def inference_atten_f(stage2: Stage2) -> dict[str, torch.Tensor]:
    """`utils.inference_atten_f`: g of every image of the three splits, batches of 64."""
    net, batch = stage2.net, stage2.settings.batch_size
    device = stage2.data.device
    return {split: torch.cat([net.pooled_features(x.to(device)) for x in feats.split(batch)])
            for split, feats in stage2.data.features.items()}


class Stage3:
    """The TF-VAEGAN loop of train_SUN.py with the SC-EGG losses; the frozen DAZLE recomputes g
    from region features for every batch."""

    def __init__(self, stage2: Stage2):
        s, data = stage2.settings, stage2.data
        self.settings, self.data, self.netA, self.head, self.batches = s, data, stage2.net, stage2.head, stage2.batches
        self.head.requires_grad_(False)
        dim_f, num_attributes = data.feature_dim, data.attributes.shape[1]
        self.E = PublishedEncoder(dim_f, num_attributes, s.hidden).to(data.device)
        self.G = PublishedGenerator(dim_f, num_attributes, s.hidden).to(data.device)
        self.D = PublishedCritic(dim_f, num_attributes, s.hidden).to(data.device)
        self.Dec = PublishedAttDec(dim_f, num_attributes, s.hidden).to(data.device)
        self.Fb = PublishedFeedback(s.hidden).to(data.device)
        self.opt_E = torch.optim.Adam(self.E.parameters(), lr=s.lr)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=s.lr, betas=(0.5, 0.999))
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=s.lr, betas=(0.5, 0.999))
        self.opt_Dec = torch.optim.Adam(self.Dec.parameters(), lr=s.dec_lr, betas=(0.5, 0.999))
        self.opt_F = torch.optim.Adam(self.Fb.parameters(), lr=s.feed_lr, betas=(0.5, 0.999))
        self.noise = torch.empty(s.batch_size, num_attributes, device=data.device)
        self.lambda1 = s.lambda1

    def _generate(self, z, att, loop: int):
        if loop == 1:
            fake = self.G(z, c=att)
            self.Dec(fake)
            return self.G(z, a1=self.settings.a1, c=att, feedback_layers=self.Fb(self.Dec.getLayersOutDet()))
        return self.G(z, c=att)

    def _latent(self, f_global, att):
        means, log_var = self.E(f_global, att)
        # published: [batch_size, latent], which crashes on the short batches its sampler returns when Cs < B
        eps = torch.randn(means.shape, device=means.device)
        return eps * torch.exp(0.5 * log_var) + means, means, log_var

    def critic_steps(self, loop: int) -> None:
        s = self.settings
        self.D.requires_grad_(True)
        self.Dec.requires_grad_(True)
        gp_sum = 0
        for _ in range(s.critic_iters):
            self.D.zero_grad()
            self.Dec.zero_grad()
            self.netA.zero_grad()
            _, features, att = self.batches(s.batch_size)
            f_global = self.netA.pooled_features(features)
            r_cost = s.recons_weight * weighted_l1(self.Dec(f_global), att)
            r_cost.backward(retain_graph=True)
            self.opt_Dec.step()
            critic_real = s.gamma_d * self.D(f_global, att).mean()
            z, _, _ = self._latent(f_global, att)
            fake = self._generate(z, att, loop)
            critic_fake = s.gamma_d * self.D(fake.detach(), att).mean()
            penalty = s.gamma_d * gradient_penalty(self.D, f_global, fake.data, att, self.lambda1)
            gp_sum += penalty.data
            (critic_fake - critic_real + penalty).backward()
            self.opt_D.step()
        gp_sum /= s.gamma_d * self.lambda1 * s.critic_iters
        if (gp_sum > 1.05).sum() > 0:
            self.lambda1 *= 1.1
        elif (gp_sum < 1.001).sum() > 0:
            self.lambda1 /= 1.1

    def generator_step(self, loop: int) -> torch.Tensor:
        s, data = self.settings, self.data
        self.D.requires_grad_(False)
        if s.recons_weight > 0 and s.freeze_dec:
            self.Dec.requires_grad_(False)
        for net in (self.E, self.G, self.netA, self.Dec, self.Fb):
            net.zero_grad()
        labels, features, att = self.batches(s.batch_size)
        f_global = self.netA.pooled_features(features)
        z, means, log_var = self._latent(f_global, att)
        recon_x = self._generate(z, att, loop)
        err_g = vae_loss(recon_x, f_global, means, log_var)
        published_cross_entropy(self.head(f_global), labels, None)  # loss_rec_ce_ref: logged, not trained
        err_g = err_g + s.lambda_s * published_cross_entropy(self.head(recon_x), labels, None)
        unseen_labels = data.unseen[torch.from_numpy(np.random.randint(data.unseen.size(0), size=labels.size(0))).to(data.device)]
        noise = self.noise[: labels.size(0)].normal_(0, 1)
        gen_unseen = self.G(noise, c=data.attributes[unseen_labels])
        err_g = err_g + s.lambda_u * published_cross_entropy(self.head(gen_unseen), unseen_labels, None)
        err_g = err_g + s.gamma_g * -self.D(recon_x, att).mean()
        self.Dec.zero_grad()
        err_g = err_g + s.recons_weight * weighted_l1(self.Dec(recon_x), att)
        err_g.backward()
        self.opt_E.step()
        self.opt_G.step()
        if loop == 1:
            self.opt_F.step()
        if s.recons_weight > 0 and not s.freeze_dec:
            self.opt_Dec.step()
        return err_g

    def batch_position(self, loop: int) -> torch.Tensor:
        """One position of the epoch loop: critic_iters critic steps, then one generator step."""
        self.critic_steps(loop)
        return self.generator_step(loop)

    def step(self) -> torch.Tensor:
        """The benchmark's stage-3 unit: one batch position without feedback and one with."""
        self.batch_position(0)
        return self.batch_position(1)

    def epoch(self) -> None:
        """All batch positions without feedback, then all with feedback (published order)."""
        for loop in (0, 1):
            for _ in range(0, len(self.data.labels["train"]), self.settings.batch_size):
                self.batch_position(loop)


class LinearLogSoftmax(nn.Module):
    def __init__(self, input_dim: int, nclass: int):
        super().__init__()
        self.fc = nn.Linear(input_dim, nclass)
        self.logic = nn.LogSoftmax(dim=1)

    def forward(self, x):
        return self.logic(self.fc(x))


class PublishedClassifier:
    """`classifier_images.CLASSIFIER` with the decoder-augmented input, without its per-epoch
    validation (the reference only scores the last epoch)."""

    def __init__(self, train_x, train_y, nclass: int, dec: PublishedAttDec, lr: float, batch_size: int):
        self.dec, self.batch_size, device = dec, batch_size, train_x.device
        self.train_x, self.train_y = self.compute_dec_out(train_x), train_y.clone()
        self.model = LinearLogSoftmax(self.train_x.size(1), nclass)
        self.model.apply(_weights_init)
        self.model.to(device)
        self.criterion = nn.NLLLoss()
        self.input = torch.empty(batch_size, self.train_x.size(1), device=device)
        self.label = torch.empty(batch_size, dtype=torch.long, device=device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(0.5, 0.999))
        self.index_in_epoch, self.epochs_completed, self.ntrain = 0, 0, self.train_x.size(0)

    @torch.no_grad()
    def compute_dec_out(self, x: torch.Tensor) -> torch.Tensor:
        self.dec.eval()
        out = []
        for part in x.split(self.batch_size):
            feat1 = self.dec(part)
            out.append(torch.cat([part, feat1, self.dec.getLayersOutDet()], dim=1))
        return torch.cat(out)

    def next_batch(self, batch_size: int):
        start = self.index_in_epoch
        if self.epochs_completed == 0 and start == 0:
            perm = torch.randperm(self.ntrain).to(self.train_x.device)
            self.train_x, self.train_y = self.train_x[perm], self.train_y[perm]
        if start + batch_size > self.ntrain:
            self.epochs_completed += 1
            rest = self.ntrain - start
            x_rest, y_rest = self.train_x[start:self.ntrain], self.train_y[start:self.ntrain]
            perm = torch.randperm(self.ntrain).to(self.train_x.device)
            self.train_x, self.train_y = self.train_x[perm], self.train_y[perm]
            self.index_in_epoch = batch_size - rest
            x_new, y_new = self.train_x[:self.index_in_epoch], self.train_y[:self.index_in_epoch]
            if rest > 0:
                return torch.cat((x_rest, x_new), 0), torch.cat((y_rest, y_new), 0)
            return x_new, y_new
        self.index_in_epoch += batch_size
        return self.train_x[start:self.index_in_epoch], self.train_y[start:self.index_in_epoch]

    def epoch(self) -> None:
        for _ in range(0, self.ntrain, self.batch_size):
            self.model.zero_grad()
            batch_input, batch_label = self.next_batch(self.batch_size)
            self.input.copy_(batch_input)
            self.label.copy_(batch_label)
            loss = self.criterion(self.model(self.input), self.label)
            loss.backward()
            self.optimizer.step()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(part).argmax(1) for part in x.split(self.batch_size)])


@torch.no_grad()
def generate_syn_feature(stage3: Stage3, classes: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`utils.generate_syn_feature` with the feedback pass (a2)."""
    att, features, labels = stage3.data.attributes, [], []
    for c in classes.tolist():
        syn_att = att[c].repeat(num, 1)
        noise = torch.randn(num, att.shape[1], device=att.device)
        fake = stage3.G(noise, c=syn_att)
        stage3.Dec(fake)
        fake = stage3.G(noise, a1=stage3.settings.a2, c=syn_att, feedback_layers=stage3.Fb(stage3.Dec.getLayersOutDet()))
        features.append(fake)
        labels.append(torch.full((num,), c, dtype=torch.long, device=att.device))
    return torch.cat(features), torch.cat(labels)


def classifiers(stage3: Stage3, dense: dict[str, torch.Tensor]) -> tuple[PublishedClassifier, PublishedClassifier]:
    """The GZSL and CZSL classifiers of one evaluation, before training."""
    s, data = stage3.settings, stage3.data
    stage3.G.eval(), stage3.Dec.eval(), stage3.Fb.eval()
    syn_x, syn_y = generate_syn_feature(stage3, data.unseen, s.syn_num)
    gzsl = PublishedClassifier(torch.cat((dense["train"], syn_x)), torch.cat((data.labels["train"], syn_y)),
                               data.attributes.shape[0], stage3.Dec, s.classifier_lr, s.syn_num)
    czsl = PublishedClassifier(syn_x, torch.searchsorted(data.unseen, syn_y), len(data.unseen), stage3.Dec,
                               s.classifier_lr, s.syn_num)
    return gzsl, czsl


def score(gzsl: PublishedClassifier, czsl: PublishedClassifier, data: ReferenceData, dense) -> dict[str, float]:
    """CZSL Acc and GZSL U / S / H (percent, per-class means) of the classifiers' last epoch."""
    seen_x, unseen_x = gzsl.compute_dec_out(dense["test_seen"]), gzsl.compute_dec_out(dense["test_unseen"])
    labels = {k: v.cpu().numpy() for k, v in data.labels.items()}
    seen_acc = mean_per_class_accuracy(gzsl.predict(seen_x).cpu().numpy(), labels["test_seen"])
    unseen_acc = mean_per_class_accuracy(gzsl.predict(unseen_x).cpu().numpy(), labels["test_unseen"])
    czsl_acc = mean_per_class_accuracy(data.unseen[czsl.predict(unseen_x)].cpu().numpy(), labels["test_unseen"])
    return {"czsl_acc": 100 * czsl_acc, "gzsl_unseen": 100 * unseen_acc, "gzsl_seen": 100 * seen_acc,
            "gzsl_h": 100 * harmonic_mean(seen_acc, unseen_acc)}


def _timed(timings: dict[str, float], name: str, work: Callable[[], object]):
    start = time.perf_counter()
    result = work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[name] = round(time.perf_counter() - start, 2)
    return result


def run_end_to_end(data: ReferenceData, settings: ReferenceSettings, seed: int, progress=None) -> dict:
    """The whole published procedure on `data`; returns per-stage seconds and the honest scores."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    progress = progress or (lambda iterable, **kwargs: iterable)
    timings: dict[str, float] = {}

    def stage1() -> Stage1:
        trainer = Stage1(data, settings)
        for _ in progress(range(settings.stage1_iters), desc="reference stage1"):
            trainer.step()
        trainer.fit_scaler()
        return trainer

    def stage2() -> Stage2:
        trainer = Stage2(s1)
        for _ in progress(range(settings.stage2_iters), desc="reference stage2"):
            trainer.step()
        return trainer

    def stage3():
        trainer = Stage3(s2)
        dense = inference_atten_f(s2)
        for _ in progress(range(settings.stage3_epochs), desc="reference stage3"):
            trainer.epoch()
        return trainer, dense

    def final():
        gzsl, czsl = classifiers(s3, dense)
        for _ in range(settings.classifier_epochs):
            gzsl.epoch()
            czsl.epoch()
        return score(gzsl, czsl, data, dense)

    s1 = _timed(timings, "stage1", stage1)
    s2 = _timed(timings, "stage2", stage2)
    s3, dense = _timed(timings, "stage3", stage3)
    scores = _timed(timings, "classifiers", final)
    return {"stage_seconds": timings, "total_seconds": round(sum(timings.values()), 2), **scores,
            "settings": dataclasses.asdict(settings)}
