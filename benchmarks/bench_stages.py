"""Throughput of every SC-EGG training stage against the published procedure, on generated data.

    python benchmarks/bench_stages.py --layout cub7                     # 7 x 7 x 512, CUB classes
    python benchmarks/bench_stages.py --layout cub14 --images 1000      # 14 x 14 x 2048
    python benchmarks/bench_stages.py --regions 49 --feature_dim 512 --attributes 85 --classes 50 --unseen 10
    python benchmarks/bench_stages.py --end_to_end --layout cub7 --images 6013 --stage3_epochs 5

Unit mode times, for the package and for the plain-PyTorch rendering of the published code in
`published_reference.py`, in the same process and interleaved (ours, reference, ours, ...), one
unit of work of every stage on the same layout, preset and batch:

  stage1      one L_S1 step (class-balanced batch read from the Arrow store / from RAM)
  cache       the g (and p_l) pass over the trainval split (reported per image)
  stage2      one L_SCR step (ours on cached g; the published code runs the frozen DAZLE on the
              region features twice per step)
  stage3      one batch position without and one with feedback, each with its critic steps
              (the published code recomputes g from region features for every batch)
  classifier  one epoch of the GZSL and one of the CZSL classifier
  inference   classifying one batch of region features
  checkpoint  one resumable stage-3 checkpoint (networks, optimizers, streams; ours only: the
              published code cannot resume)

For each it prints ms per unit, units/s, the GFLOP of the unit's matrix products as each
implementation executes them (the counts are written out below; elementwise work is not
counted), the achieved GFLOP/s, that rate as a share of a large float32 and bf16 matmul
measured in the same run, and the speed-up over the reference. Time is the median of
`--repeats` after a warm-up.

`--end_to_end` runs a whole preset instead, the package's pipeline and the reference procedure
each in its own process, and prints per-stage seconds, peak RSS and the honest last-epoch
accuracies of both.

Timings are only comparable inside one run: on a shared machine, read the ratios.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import published_reference as ref  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = ("stage1", "cache", "stage2", "stage3", "classifier", "inference", "checkpoint")
LAYOUTS = {
    "cub7": dict(regions=49, feature_dim=512, attributes=312, classes=200, unseen=50, images=6013),
    "cub14": dict(regions=196, feature_dim=2048, attributes=312, classes=200, unseen=50, images=1000),
}
_CUB_SPLITS = np.array([7057, 1764, 2967])  # trainval / test_seen / test_unseen images of CUB


# ----------------------------------------------------------------------------------------------
# Layout, data and models
# ----------------------------------------------------------------------------------------------
@dataclass
class Layout:
    regions: int
    feature_dim: int
    attributes: int
    classes: int
    unseen: int
    images: int
    val: int = 0  # seen classes held out as the validation view's pseudo-unseen (none: no view)

    def synthetic_overrides(self) -> list[str]:
        sizes = np.maximum(np.round(_CUB_SPLITS * self.images / _CUB_SPLITS.sum()).astype(int),
                           [self.classes - self.unseen, self.classes - self.unseen, self.unseen])
        return [f"num_classes={self.classes}", f"num_unseen={self.unseen}", f"num_val={self.val}",
                f"num_attributes={self.attributes}", f"num_regions={self.regions}",
                f"feature_dim={self.feature_dim}", f"split_sizes={json.dumps([int(s) for s in sizes])}"]


def layout_from(args) -> Layout:
    base = dict(LAYOUTS[args.layout]) if args.layout else dict(LAYOUTS["cub7"])
    for key in base:
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    # CUB's proportion: 50 of its 150 seen classes are val classes
    return Layout(**base, val=(base["classes"] - base["unseen"]) // 3 if args.default_run else 0)


def training_argv(args, layout: Layout, output_dir: Path) -> list[str]:
    """The flags both implementations are configured from: dataset, preset, schedule."""
    argv = ["--dataset", "synthetic", "--synthetic_overrides", *layout.synthetic_overrides(),
            "--config", str(args.config), "--cache_dir", str(args.cache_dir), "--output_dir", str(output_dir),
            "--batch_size", str(args.batch_size), "--log_with", "none", "--plots", "false", "--seed", str(args.seed)]
    if args.stage3_epochs is not None:
        argv += ["--stage3_epochs", str(args.stage3_epochs)]
    return argv + list(args.train_args)


def default_run_argv(args) -> list[str]:
    """What a plain `--dataset CUB` run adds to the fixed preset (ours only): the preset chosen
    among the dataset's candidates on the validation view, the calibration offset chosen there,
    and the plots; the model card is written either way."""
    candidates = [str(REPO / "hub_configs" / f"{args.config.stem.split('-')[0]}-{kind}.json") for kind in ("published", "paper")]
    return ["--preset_choice", "validation", "--preset_candidates", *candidates, "--calibration", "validation",
            "--plots", "true"]


def build_context(args, layout: Layout, output_dir: Path):
    """A RunContext (model sized from the data) and the dataset, as the pipeline builds them."""
    from accelerate import Accelerator

    from modeling_scegg import SCEGGModel
    from modeling_scegg.training import parse_training_args
    from modeling_scegg.training.checkpointing import CheckpointManager
    from modeling_scegg.training.common import RunContext
    from modeling_scegg.training.loading import build_config, load_data

    train_args = parse_training_args(training_argv(args, layout, output_dir))
    data = load_data(train_args)
    config = build_config(data, train_args.model_config_overrides())
    torch.manual_seed(args.seed)
    model = SCEGGModel(config)
    model.set_class_semantics(torch.from_numpy(data.semantics.attributes), torch.from_numpy(data.semantics.word_vectors))
    with torch.no_grad():  # a trained-looking attention, so softmax and scores are not degenerate
        model.scen.local_embedding.attention_weight.normal_(0, 0.01)
    tracker = Accelerator(mixed_precision=train_args.mixed_precision)
    ctx = RunContext(args=train_args, model=model.to(tracker.device), accelerator=tracker,
                     checkpoints=CheckpointManager(output_dir))
    return ctx, data


# ----------------------------------------------------------------------------------------------
# FLOP counts of the matrix products of each unit (2 m k n per product; a backward pass that
# needs the weight gradient and the input gradient costs two products more, weight only one)
# ----------------------------------------------------------------------------------------------
@dataclass
class Sizes:
    B: int   # batch
    R: int   # regions
    D: int   # channels
    A: int   # attributes
    V: int   # word-vector size
    C: int   # classes
    Cu: int  # unseen classes
    Hsc: int  # SC hidden width
    Hr: int   # stage-2 head width
    He: int   # encoder hidden
    Hg: int   # generator hidden (= feedback width)
    Hc: int   # critic hidden
    Hd: int   # decoder hidden
    L: int    # latent size

    @classmethod
    def of(cls, config, batch: int) -> "Sizes":
        return cls(B=batch, R=config.num_regions, D=config.feature_dim, A=config.num_attributes, V=config.word_dim,
                   C=config.num_classes, Cu=config.num_unseen_classes, Hsc=config.resolved_sc_hidden_dim,
                   Hr=config.regression_hidden_dim, He=config.encoder_hidden_dim, Hg=config.generator_hidden_dim,
                   Hc=config.critic_hidden_dim, Hd=config.decoder_hidden_dim, L=config.resolved_latent_dim)


def mm(m: int, k: int, n: int) -> float:
    return 2.0 * m * k * n


def flops_ours_stage1(s: Sizes) -> float:
    """Stage1Network: keys / projections (V W), logits and region projections (B R, D) x (D, A),
    attended embedding, class scores, SC in the cheaper product order, CLS_g; backward without
    gradients for the regions."""
    queries = 2 * mm(s.A, s.V, s.D) * 3                      # both V W products, grads of V and W
    attention = 2 * mm(s.B * s.R, s.D, s.A) * 2               # logits + projections, weight grads
    embed = 2 * s.B * s.A * s.R * 3 + mm(s.B, s.A, s.C) * 2
    if s.R * (s.A + s.D) < s.A * s.D:
        sc = mm(s.B * s.Hsc, s.A, s.R) * 3 + mm(s.B * s.Hsc, s.R, s.D) * 2 + mm(s.B * s.D, s.Hsc, 1) * 3
    else:
        sc = mm(s.B * s.A, s.R, s.D) * 2 + mm(s.B * s.D, s.A, s.Hsc) * 3 + mm(s.B * s.D, s.Hsc, 1) * 3
    return queries + attention + embed + sc + mm(s.B, s.D, s.C) * 3


def _published_attention(s: Sizes, batch: int) -> float:
    """DAZLE's extract_attention: (V W_2) then with the regions, and H = A F."""
    return mm(s.A, s.V, s.D) + mm(batch * s.A, s.D, s.R) + mm(batch * s.A, s.R, s.D)


def _published_dazle_forward(s: Sizes) -> float:
    """DAZLE.forward: attention, S_p and A_p (V W then with H), local scores, mlp compose, CLS."""
    return (_published_attention(s, s.B) + 2 * (mm(s.A, s.V, s.D) + 2 * s.B * s.A * s.D) + 2 * s.B * s.A * s.C
            + mm(s.B * s.D, s.A, s.Hsc) + mm(s.B * s.D, s.Hsc, 1) + mm(s.B, s.D, s.C))


def flops_reference_stage1(s: Sizes) -> float:
    """Forward, then backward: attention products get the gradient of their non-region operand
    only, every other product both gradients (W_3's A_p gets none: it is not in the loss)."""
    backward = (_published_attention(s, s.B) - mm(s.A, s.V, s.D) + 2 * mm(s.A, s.V, s.D) * 2
                + 2 * (2 * s.B * s.A * s.D) + 2 * s.B * s.A * s.C
                + (mm(s.B * s.D, s.A, s.Hsc) + mm(s.B * s.D, s.Hsc, 1) + mm(s.B, s.D, s.C)) * 2)
    return _published_dazle_forward(s) + backward


def _head(s: Sizes, batch: int) -> float:
    return mm(batch, s.D, s.Hr) + mm(batch, s.Hr, s.C)


def flops_ours_stage2(s: Sizes) -> float:
    return _head(s, s.B) + mm(s.B, s.D, s.Hr) + 2 * mm(s.B, s.Hr, s.C)


def flops_reference_stage2(s: Sizes) -> float:
    pooled = _published_attention(s, s.B)
    return pooled + _published_dazle_forward(s) + flops_ours_stage2(s)


def _layers(s: Sizes) -> dict[str, list[tuple[int, int]]]:
    """(fan_in, fan_out) of the Linear layers of each TF-VAEGAN network and of CLS_g."""
    return {"E": [(s.D + s.A, s.He), (s.He, 2 * s.L), (2 * s.L, s.L), (2 * s.L, s.L)],
            "G": [(s.L + s.A, s.Hg), (s.Hg, s.D)], "D": [(s.D + s.A, s.Hc), (s.Hc, 1)],
            "Dec": [(s.D, s.Hd), (s.Hd, s.A)], "F": [(s.Hd, s.Hg), (s.Hg, s.Hg)], "CLS": [(s.D, s.Hr), (s.Hr, s.C)]}


def net(s: Sizes, name: str, rows: int, first: int, rest: int) -> float:
    """Products of one call of a network on `rows` rows: each layer's forward times 1 (forward
    only), 2 (plus one of the weight / input gradients) or 3 (plus both); `first` for the first
    layer (its input gradient is only needed when the input carries one), `rest` for the others."""
    layers = _layers(s)[name]
    return sum(mm(rows, i, o) * (first if index == 0 else rest) for index, (i, o) in enumerate(layers))


def _penalty(s: Sizes) -> float:
    """WGAN-GP on B interpolates: critic forward, the input gradient, and the backward of that
    gradient (weight and upstream gradients): four products of the first layer."""
    (i, o), _ = _layers(s)["D"]
    return 4 * mm(s.B, i, o)


def flops_ours_stage3_pass(s: Sizes, feedback: bool) -> float:
    """stage3.training_pass with the default L_EGS (reconstructions as seen fakes, unseen fakes
    without feedback). `feedback`: a feedback pass with a non-zero weight (the generator then
    runs twice and F once; with weight 0, generate_features skips both)."""
    B = s.B
    extra = net(s, "Dec", B, 1, 1) + net(s, "F", B, 1, 1) + net(s, "G", B, 1, 1) if feedback else 0.0
    critic = (net(s, "Dec", B, 2, 3) + net(s, "E", B, 1, 1) + net(s, "G", B, 1, 1) + extra + _penalty(s)
              + net(s, "D", 2 * B, 2, 3))
    if feedback:
        recon = net(s, "G", B, 1, 1) + net(s, "Dec", B, 1, 1) + net(s, "F", B, 2, 3) + net(s, "G", B, 3, 3)
    else:
        recon = net(s, "G", B, 3, 3)
    generator = (net(s, "E", B, 2, 3) + recon + net(s, "D", B, 2, 2) + net(s, "Dec", B, 3, 3)
                 + 2 * net(s, "CLS", B, 2, 2) + net(s, "G", B, 2, 3))
    return 5 * critic + generator


def flops_reference_stage3_pass(s: Sizes, loop: int) -> float:
    """Stage3.batch_position: the published loop body; in loop 1 the feedback path runs whatever
    a1 is (a1 = 0 only zeroes its contribution), and every batch's g is recomputed by DAZLE."""
    B = s.B
    extra = net(s, "Dec", B, 1, 1) + net(s, "F", B, 1, 1) + net(s, "G", B, 1, 1) if loop else 0.0
    critic = (_published_attention(s, B) + net(s, "Dec", B, 2, 3) + 2 * net(s, "D", B, 2, 3)
              + net(s, "E", B, 1, 1) + net(s, "G", B, 1, 1) + extra + _penalty(s))
    if loop:
        recon = net(s, "G", B, 1, 1) + net(s, "Dec", B, 1, 1) + net(s, "F", B, 2, 3) + net(s, "G", B, 3, 3)
    else:
        recon = net(s, "G", B, 3, 3)
    generator = (_published_attention(s, B) + net(s, "E", B, 2, 3) + recon + net(s, "CLS", B, 1, 1)
                 + 2 * net(s, "CLS", B, 2, 2) + net(s, "G", B, 2, 3) + net(s, "D", B, 2, 2) + net(s, "Dec", B, 3, 3))
    return 5 * critic + generator


def flops_classifier_epoch(s: Sizes, num_train: int, syn_num: int) -> float:
    width = s.D + s.A + s.Hd
    return 2 * mm(num_train + s.Cu * syn_num, width, s.C) + 2 * mm(s.Cu * syn_num, width, s.Cu)


def flops_ours_inference(s: Sizes, batch: int) -> float:
    width = s.D + s.A + s.Hd
    return (2 * mm(s.A, s.V, s.D) + 2 * mm(batch * s.R, s.D, s.A) + mm(batch, s.R, s.D) + mm(batch, s.A, s.C)
            + net(s, "Dec", batch, 1, 1) + mm(batch, width, s.C + s.Cu))


def flops_reference_inference(s: Sizes, batch: int) -> float:
    width = s.D + s.A + s.Hd
    return _published_attention(s, batch) + net(s, "Dec", batch, 1, 1) + mm(batch, width, s.C + s.Cu)


def flops_ours_cache(s: Sizes, batch: int) -> float:
    return 2 * mm(s.A, s.V, s.D) + 2 * mm(batch * s.R, s.D, s.A) + mm(batch, s.R, s.D) + mm(batch, s.A, s.C)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int, repeats: int = 5,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """GFLOP/s of a (size x size) @ (size x size) product, median of `repeats`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    _sync(device)
    times = []
    for _ in range(repeats):
        start = clock()
        a @ b
        _sync(device)
        times.append(clock() - start)
    return mm(size, size, size) / statistics.median(times) / 1e9


def time_pair(units: dict[str, Callable[[], object]], repeats: int, device: torch.device,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each unit, calls interleaved so load changes hit both alike."""
    for unit in units.values():
        unit()
    _sync(device)
    times = {name: [] for name in units}
    for _ in range(repeats):
        for name, unit in units.items():
            start = clock()
            unit()
            _sync(device)
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@dataclass
class Row:
    stage: str
    impl: str
    precision: str
    seconds: float
    gflop: float
    per: str = "step"

    def line(self, peaks: dict[str, float], reference_seconds: float | None) -> str:
        rate = self.gflop / self.seconds
        shares = "  ".join(f"{rate / peak:6.1%} of {name}" for name, peak in peaks.items()) if self.gflop else ""
        speedup = f"  x{reference_seconds / self.seconds:5.2f} vs reference" if reference_seconds else ""
        return (f"{self.stage:10s} {self.impl:9s} {self.precision:4s} {1000 * self.seconds:10.1f} ms/{self.per:6s}"
                f" {1 / self.seconds:9.2f}/s {self.gflop:9.2f} GFLOP {rate:8.1f} GFLOP/s  {shares}{speedup}")


# ----------------------------------------------------------------------------------------------
# The units of each stage
# ----------------------------------------------------------------------------------------------
def unit_stage1(ctx, data, reference):
    from modeling_scegg.data import RegionFeatureReader
    from modeling_scegg.training.stage1 import prepare_stage1, stage1_step

    run = prepare_stage1(ctx, RegionFeatureReader(data.splits["train"]))
    state = ctx.stage_state("stage1")
    trainer = ref.Stage1(reference, ref.ReferenceSettings(batch_size=ctx.args.batch_size))
    return {"ours": lambda: stage1_step(run, state), "reference": trainer.step}


def unit_cache(ctx, data, reference):
    from modeling_scegg.data import RegionFeatureReader
    from modeling_scegg.training.stage1 import compute_dense_features

    reader = RegionFeatureReader(data.splits["train"])
    net = ref.PublishedDAZLE(reference)
    batch = ctx.args.eval_batch_size

    @torch.no_grad()
    def published():
        return torch.cat([net.pooled_features(x.to(reference.device)) for x in reference.features["train"].split(batch)])

    return {"ours": lambda: compute_dense_features(ctx, reader, True), "reference": published}


def _train_cache(ctx, data):
    from modeling_scegg.data import RegionFeatureReader
    from modeling_scegg.training.stage1 import compute_dense_features

    cache = compute_dense_features(ctx, RegionFeatureReader(data.splits["train"]), True)
    ctx.model.scen.fit_scaler(cache.features)
    cache.features = ctx.model.scen.scale(cache.features).detach()
    return cache


def _reference_stage2(ctx, reference) -> ref.Stage2:
    return ref.Stage2(ref.Stage1(reference, ref.ReferenceSettings.from_run(ctx.args, ctx.model.config)))


def unit_stage2(ctx, data, reference):
    from modeling_scegg.training.stage2 import prepare_stage2, stage2_step

    run = prepare_stage2(ctx, _train_cache(ctx, data))
    state = ctx.stage_state("stage2")
    return {"ours": lambda: stage2_step(run, state), "reference": _reference_stage2(ctx, reference).step}


def unit_stage3(ctx, data, reference):
    from modeling_scegg.training import stage3

    state = stage3._stage3_state(ctx, _train_cache(ctx, data))

    def ours():
        stage3.training_pass(state, with_feedback=False)
        return stage3.training_pass(state, with_feedback=True)

    return {"ours": ours, "reference": ref.Stage3(_reference_stage2(ctx, reference)).step}


def unit_classifier(ctx, data, reference):
    from modeling_scegg.training.classifiers import (
        _classifier_steps,
        autocast_dtype,
        prepare_classifier_data,
        train_epoch,
    )
    from modeling_scegg.training.state import FeatureCache, SplitFeatures

    train = _train_cache(ctx, data)
    test = SplitFeatures(features=train.features[:64], labels=train.labels[:64])
    model, args, accelerator = ctx.model, ctx.args, ctx.accelerator
    prepared = prepare_classifier_data(ctx, FeatureCache(train=train, test_seen=test, test_unseen=test),
                                       autocast_dtype(accelerator.mixed_precision))
    nets = accelerator.prepare(model.gzsl_classifier.train(), model.czsl_classifier.train())
    steps = _classifier_steps(accelerator, nets, args.classifier_lr)
    rng = np.random.default_rng(0)

    def ours():
        for net, step, x, y in zip(nets, steps, (prepared.gzsl_x, prepared.czsl_x), (prepared.gzsl_y, prepared.czsl_y)):
            train_epoch(net, x, y, rng, args.syn_num, step, accelerator.device)

    stage3 = ref.Stage3(_reference_stage2(ctx, reference))
    dense = {"train": torch.rand(len(reference.labels["train"]), reference.feature_dim, device=reference.device)}
    gzsl, czsl = ref.classifiers(stage3, dense)

    def published():
        gzsl.epoch()
        czsl.epoch()

    return {"ours": ours, "reference": published}


def unit_inference(ctx, data, reference):
    from modeling_scegg.data import RegionFeatureReader

    model, batch = ctx.model.eval(), ctx.args.eval_batch_size
    reader = RegionFeatureReader(data.splits["test_unseen"])
    indices = np.arange(min(batch, len(reader)))
    device = model.class_attributes.device
    stage3 = ref.Stage3(_reference_stage2(ctx, reference))
    gzsl, czsl = ref.classifiers(stage3, {"train": torch.rand(8, reference.feature_dim, device=reference.device)})
    regions = reference.features["test_unseen"][: len(indices)].to(reference.device)

    @torch.no_grad()
    def ours():
        return model(torch.from_numpy(reader.take(indices)).to(device).float())

    @torch.no_grad()
    def published():
        x = gzsl.compute_dec_out(stage3.netA.pooled_features(regions))
        return gzsl.model(x), czsl.model(x)

    return {"ours": ours, "reference": published}


def unit_checkpoint(ctx, data, reference):
    from modeling_scegg.training import stage3

    accelerator = ctx.accelerator
    state = stage3._stage3_state(ctx, _train_cache(ctx, data))
    stage3.training_pass(state, with_feedback=False)  # optimizer moments exist, as in a running stage
    def save():
        state.stream.step += 1  # a new step folder each time, as in training
        return ctx.checkpoints.save_step(accelerator, "stage3", state.stream)

    return {"ours": save}


UNITS = {"stage1": unit_stage1, "cache": unit_cache, "stage2": unit_stage2, "stage3": unit_stage3,
         "classifier": unit_classifier, "inference": unit_inference, "checkpoint": unit_checkpoint}


def unit_flops(stage: str, ctx, data) -> dict[str, tuple[float, str]]:
    """GFLOP per unit for (ours, reference) and what a unit is."""
    s = Sizes.of(ctx.model.config, ctx.args.batch_size)
    n_train = len(data.splits["train"])
    batch = ctx.args.eval_batch_size
    if stage == "stage1":
        return {"ours": (flops_ours_stage1(s), "step"), "reference": (flops_reference_stage1(s), "step")}
    if stage == "cache":
        return {"ours": (flops_ours_cache(s, n_train), "split"),
                "reference": (_published_attention(s, n_train), "split")}
    if stage == "stage2":
        return {"ours": (flops_ours_stage2(s), "step"), "reference": (flops_reference_stage2(s), "step")}
    if stage == "stage3":
        feedback = bool(ctx.model.config.feedback_weight)
        ours = flops_ours_stage3_pass(s, False) + flops_ours_stage3_pass(s, feedback)
        return {"ours": (ours, "step"),
                "reference": (flops_reference_stage3_pass(s, 0) + flops_reference_stage3_pass(s, 1), "step")}
    if stage == "classifier":
        value = flops_classifier_epoch(s, n_train, ctx.args.syn_num)
        return {"ours": (value, "epoch"), "reference": (value, "epoch")}
    if stage == "checkpoint":
        return {"ours": (0.0, "save")}
    n = min(batch, len(data.splits["test_unseen"]))
    return {"ours": (flops_ours_inference(s, n), "batch"), "reference": (flops_reference_inference(s, n), "batch")}


PRODUCT_OPS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::linear"}


def print_cpu_profile(stage: str, unit: Callable[[], object], gflop: float, repeats: int, rows: int = 15) -> None:
    """`--profile --clock cpu`: every aten operator's thread CPU time over `repeats` units, by
    operator, shapes and dtypes. torch.profiler times operators by the wall clock, so on a shared
    machine an operator that lost its core to another process looks slow; CPU time does not."""
    from collections import defaultdict

    from torch.utils._python_dispatch import TorchDispatchMode

    seconds: dict[tuple, float] = defaultdict(float)

    class OperatorClock(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            start = time.thread_time()
            out = func(*args, **(kwargs or {}))
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            key = (f"aten::{func.overloadpacket.__name__}", str([list(t.shape) for t in tensors]),
                   ",".join(sorted({str(t.dtype).removeprefix("torch.") for t in tensors})))
            seconds[key] += time.thread_time() - start
            return out

    start = time.thread_time()
    with OperatorClock():
        for _ in range(repeats):
            unit()
    total = (time.thread_time() - start) / repeats
    print(f"-- CPU-time profile of one {stage} unit (ours), mean of {repeats}: {1000 * total:.1f} ms in all "
          f"(operators {1000 * sum(seconds.values()) / repeats:.1f} ms, the rest Python and autograd)")
    for (name, shapes, dtypes), value in sorted(seconds.items(), key=lambda item: -item[1])[:rows]:
        print(f"{1000 * value / repeats:8.2f} ms {value / repeats / total:6.1%}  {name:32s} {dtypes:14s} {shapes}")
    products = sum(value for key, value in seconds.items() if key[0] in PRODUCT_OPS) / repeats
    print(f"matrix products: {1000 * products:.1f} ms of {1000 * total:.1f} ({products / total:.0%}); "
          f"alone they run at {gflop / products:.1f} GFLOP/s")


def print_profile(stage: str, unit: Callable[[], object], gflop: float, rows: int = 15) -> None:
    """torch.profiler's operator table of one unit of ours, by self time and input shapes, and
    the share of the matrix products in it: the rate the unit would reach if everything else
    took no time, the limit that fusing the elementwise work cannot pass."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, record_shapes=True) as prof:
        unit()
    print(f"-- profile of one {stage} unit (ours)")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows,
                                                             max_name_column_width=32, max_shapes_column_width=56))
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    products = sum(e.self_cpu_time_total for e in events if e.key in PRODUCT_OPS)
    if products:
        print(f"matrix products: {products / 1000:.1f} of {total / 1000:.1f} ms self time ({products / total:.0%}); "
              f"alone they run at {gflop / (products / 1e6):.1f} GFLOP/s")


def run_units(args) -> None:
    layout = layout_from(args)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    from modeling_scegg.training.precision import native_bf16

    clock = CLOCKS[args.clock]
    peaks = {"fp32": matmul_peak(torch.float32, device, args.matmul_size, clock=clock),  # one sample where emulated:
             "bf16": matmul_peak(torch.bfloat16, device, args.matmul_size, repeats=5 if native_bf16(device) else 1,
                                 clock=clock)}  # ~100x slower there
    out = Path(tempfile.mkdtemp(prefix="bench-stages-run-"))
    try:
        ctx, data = build_context(args, layout, out)
        reference = ref.load_reference_data(data, device)
        _print_header(args, layout, ctx, peaks)
        shown = {k: v for k, v in peaks.items() if k == "fp32" or native_bf16(device)}  # no share of an emulated peak
        for stage in args.stages:
            flops = unit_flops(stage, ctx, data)
            units = UNITS[stage](ctx, data, reference)
            seconds = time_pair(units, args.repeats, device, clock)
            for impl in seconds:  # the published code has no mixed precision: its products run in float32
                dtype = {"no": "fp32"}.get(ctx.args.mixed_precision, ctx.args.mixed_precision) if impl == "ours" else "fp32"
                row = Row(stage, impl, dtype, seconds[impl], flops[impl][0] / 1e9, flops[impl][1])
                print(row.line(shown, seconds.get("reference") if impl == "ours" else None), flush=True)
            if args.profile and args.clock == "cpu":
                print_cpu_profile(stage, units["ours"], flops["ours"][0] / 1e9, args.repeats)
            elif args.profile:
                print_profile(stage, units["ours"], flops["ours"][0] / 1e9)
            ctx.accelerator.free_memory()  # as between a run's stages: the next unit's save_state holds only its own
        after = matmul_peak(torch.float32, device, args.matmul_size, clock=clock)
        print(f"fp32 matmul after the stages: {after:.1f} GFLOP/s (before: {peaks['fp32']:.1f})")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def cpu_name() -> str:
    """The CPU model as the kernel reports it (platform.processor() is often empty on Linux)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({torch.backends.cpu.get_cpu_capability()})"
    return platform.processor() or "cpu"


def _print_header(args, layout: Layout, ctx, peaks: dict[str, float]) -> None:
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    print(f"machine: {machine}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"layout: R={layout.regions} D={layout.feature_dim} A={layout.attributes} C={layout.classes} "
          f"(unseen {layout.unseen}), {layout.images} images; preset {args.config}; batch {ctx.args.batch_size}; "
          f"mixed precision (ours): {ctx.args.mixed_precision}")
    from modeling_scegg.training.precision import native_bf16

    note = "" if native_bf16(args.device) else "; no native bf16 here: bf16 products are emulated"
    print("matmul peak (" + " ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items())
          + f", {args.matmul_size}^3{note}; clock: {args.clock})")


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------
def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_end_to_end(args) -> dict:
    """Run one implementation end to end in this process (called in a subprocess)."""
    layout = layout_from(args)
    out = Path(args.output_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.impl == "ours":
        from modeling_scegg.training import parse_training_args, run_pipeline

        argv = training_argv(args, layout, out) + (default_run_argv(args) if args.default_run else [])
        start = time.perf_counter()
        results = run_pipeline(parse_training_args(argv))
        total = time.perf_counter() - start
        scores = {k: results[k] for k in ("czsl_acc", "gzsl_unseen", "gzsl_seen", "gzsl_h")}
        return {"stage_seconds": results["stage_seconds"], "total_seconds": round(total, 2), **scores,
                "mixed_precision": results["training_args"]["mixed_precision"], "peak_rss_mib": _peak_rss_mib()}
    from tqdm.auto import tqdm

    from modeling_scegg.training import parse_training_args
    from modeling_scegg.training.loading import build_config, load_data

    train_args = parse_training_args(training_argv(args, layout, out))
    data = load_data(train_args)
    config = build_config(data, train_args.model_config_overrides())
    start = time.perf_counter()
    reference = ref.load_reference_data(data, args.device)
    load_seconds = time.perf_counter() - start
    result = ref.run_end_to_end(reference, ref.ReferenceSettings.from_run(train_args, config), args.seed, progress=tqdm)
    result["stage_seconds"]["load_into_ram"] = round(load_seconds, 2)
    result["total_seconds"] = round(result["total_seconds"] + load_seconds, 2)
    return {**result, "peak_rss_mib": _peak_rss_mib()}


def run_end_to_end(args) -> None:
    layout = layout_from(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    from modeling_scegg.training import parse_training_args
    from modeling_scegg.training.loading import load_data

    seeds, by_seed = args.seeds or [args.seed], {}
    with tempfile.TemporaryDirectory(prefix="bench-stages-e2e-") as tmp:
        load_data(parse_training_args(training_argv(args, layout, Path(tmp) / "convert")))  # convert once, untimed
        for seed in seeds:  # the data does not depend on the seed: only the training's randomness changes
            args.seed, results = seed, {}
            for impl in args.impls:
                command = [sys.executable, __file__, "--child", impl, "--output_dir", str(Path(tmp) / f"{impl}-{seed}"),
                           *_forwarded(args)]
                completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
                line = next(text for text in completed.stdout.splitlines() if text.startswith("RESULT "))
                results[impl] = json.loads(line[len("RESULT "):])
                print(f"{impl} seed {seed}: " + json.dumps(results[impl]), flush=True)
            _print_end_to_end(args, layout, results)
            by_seed[seed] = results
    if len(seeds) > 1:
        _print_over_seeds(by_seed)


def _print_over_seeds(by_seed: dict[int, dict[str, dict]]) -> None:
    """Mean ± sample std per implementation over the seeds, and of the per-seed difference
    (ours - reference), which is what says whether a gap is more than seed noise."""
    seeds = list(by_seed)
    keys = ("czsl_acc", "gzsl_unseen", "gzsl_seen", "gzsl_h", "total_seconds")
    print(f"\nover seeds {', '.join(map(str, seeds))}:" + "".join(f"{k:>18s}" for k in keys))
    rows = {impl: [[by_seed[s][impl][k] for s in seeds] for k in keys] for impl in by_seed[seeds[0]]}
    if {"ours", "reference"} <= set(rows):
        rows["ours - reference"] = [[a - b for a, b in zip(x, y)] for x, y in zip(rows["ours"], rows["reference"])]
    for name, columns in rows.items():
        print(f"{name:<18s}" + "".join(f"{statistics.mean(c):10.2f} ± {statistics.stdev(c):<5.2f}" for c in columns))


def _forwarded(args) -> list[str]:
    """The flags of this run, for the child processes."""
    flags = ["--config", str(args.config), "--cache_dir", str(args.cache_dir), "--batch_size", str(args.batch_size),
             "--seed", str(args.seed), "--layout", args.layout or "cub7", "--device", args.device]
    flags += ["--default_run"] if args.default_run else []
    for key in ("regions", "feature_dim", "attributes", "classes", "unseen", "images", "stage3_epochs", "threads"):
        if getattr(args, key) is not None:
            flags += [f"--{key}", str(getattr(args, key))]
    return flags + (["--train_args", *args.train_args] if args.train_args else [])


def _print_end_to_end(args, layout: Layout, results: dict) -> None:
    print(f"\nend to end: layout R={layout.regions} D={layout.feature_dim} A={layout.attributes} C={layout.classes}, "
          f"{layout.images} images, preset {args.config}, stage3_epochs {args.stage3_epochs}, "
          f"{torch.get_num_threads()} torch threads")
    order = ("load_into_ram", "stage1", "stage2", "stage3", "classifiers")
    stages = [s for s in order if any(s in r["stage_seconds"] for r in results.values())]
    # the rest: data loading, the validation view's runs, plots, card and saving
    print(f"{'':10s}" + "".join(f"{s:>14s}" for s in stages) + f"{'rest':>10s}{'total s':>10s}{'peak RSS':>10s}"
          "  CZSL / U / S / H")
    for impl, r in results.items():
        seconds = [r["stage_seconds"].get(s, float("nan")) for s in stages]
        rest = r["total_seconds"] - sum(x for x in seconds if x == x)
        cells = "".join(f"{x:14.1f}" for x in seconds)
        print(f"{impl:10s}{cells}{rest:10.1f}{r['total_seconds']:10.1f}{r['peak_rss_mib']:8.0f} MiB  "
              f"{r['czsl_acc']:.1f} / {r['gzsl_unseen']:.1f} / {r['gzsl_seen']:.1f} / {r['gzsl_h']:.1f}")
    if {"ours", "reference"} <= set(results):
        print(f"speed-up end to end: x{results['reference']['total_seconds'] / results['ours']['total_seconds']:.2f}")


# ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", choices=sorted(LAYOUTS), help="shortcut for R, D, A, C, unseen and images")
    parser.add_argument("--regions", type=int, help="R")
    parser.add_argument("--feature_dim", type=int, help="D")
    parser.add_argument("--attributes", type=int, help="A")
    parser.add_argument("--classes", type=int, help="C")
    parser.add_argument("--unseen", type=int, help="unseen classes")
    parser.add_argument("--images", type=int, help="N, all images; split like CUB (60 / 15 / 25 %%)")
    parser.add_argument("--config", type=Path, default=REPO / "hub_configs" / "cub-published.json", help="preset")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true",
                        help="also print the operators' times of ours: torch.profiler's table of one unit, or "
                             "with --clock cpu each operator's CPU time over --repeats units")
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="units: wall time, or cpu: the process's CPU time, which on a shared CPU counts the work "
                             "and not the wait for a core (with --threads 1 on a quiet machine the two agree)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where both implementations run (ours follows Accelerate, which picks the GPU when there is one)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--seeds", type=int, nargs="+", help="end to end: one run per seed and mean ± std over them")
    parser.add_argument("--cache_dir", type=Path, help="where the generated data is kept (default: a temp dir, deleted)")
    parser.add_argument("--end_to_end", action="store_true", help="run the whole preset instead of units")
    parser.add_argument("--default_run", action="store_true",
                        help="end to end: ours does everything a plain `--dataset CUB` run does (validation view with "
                             "the preset choice and calibration, plots, card); the data gets val classes (CUB's share)")
    parser.add_argument("--impls", nargs="+", default=["ours", "reference"], choices=["ours", "reference"])
    parser.add_argument("--stage3_epochs", type=int, help="end to end: override the preset's stage-3 epochs")
    parser.add_argument("--train_args", nargs=argparse.REMAINDER, default=[],
                        help="further flags for the training run (last on the line), e.g. --stage1_iters 50")
    parser.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.child:
        args.impl = args.child
        print("RESULT " + json.dumps(child_end_to_end(args)), flush=True)
        return
    temporary = args.cache_dir is None
    args.cache_dir = Path(tempfile.mkdtemp(prefix="bench-stages-data-")) if temporary else args.cache_dir
    try:
        (run_end_to_end if args.end_to_end else run_units)(args)
    finally:
        if temporary:
            shutil.rmtree(args.cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
