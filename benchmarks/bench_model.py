"""Parameter counts per network and forward time of SCEGGModel at CUB sizes.

    python benchmarks/bench_model.py [--batch 64] [--repeats 5] [--device cpu|cuda]

The forward time is compared, in the same run, with the TF-VAEGAN baseline configuration
(`dense_feature_source="pooled"`: same classifiers, no SCEN), so the ratio shows what the
attribute attention costs at inference.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from modeling_scegg import SCEGGConfig, SCEGGModel


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_table(model: SCEGGModel) -> dict[str, int]:
    scen, eggn = model.scen, model.eggn
    return {
        "SCEN / LEN (W_att, W_emb, V)": count(scen.local_embedding),
        "SCEN / SC (attribute-axis MLP)": count(scen.compression),
        "SCEN / CLS_g stage 1": count(scen.global_classifier),
        "SCEN / CLS_g stage 2 (regression head)": count(scen.regression_head),
        "EGGN / encoder": count(eggn.encoder),
        "EGGN / generator": count(eggn.generator),
        "EGGN / critic": count(eggn.critic),
        "EGGN / attribute decoder": count(eggn.decoder),
        "EGGN / feedback": count(eggn.feedback),
        "GZSL classifier": count(model.gzsl_classifier),
        "CZSL classifier": count(model.czsl_classifier),
        "total": count(model),
    }


@torch.inference_mode()
def time_forward(model: SCEGGModel, batch: torch.Tensor, repeats: int) -> float:
    model(batch)
    if batch.is_cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def build(device: str, **overrides) -> SCEGGModel:
    torch.manual_seed(0)
    model = SCEGGModel(SCEGGConfig(**overrides))
    model.set_class_semantics(torch.rand(model.config.num_classes, model.config.num_attributes),
                              torch.randn(model.config.num_attributes, model.config.word_dim))
    return model.to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    model = build(args.device)
    print("parameters at CUB sizes (A=312, D=2048, R=196, C=200):")
    for name, value in parameter_table(model).items():
        print(f"  {name:<42}{value:>14,}")
    cfg = model.config
    batch = torch.rand(args.batch, cfg.num_regions, cfg.feature_dim, device=args.device)
    full = time_forward(model, batch, args.repeats)
    pooled = time_forward(build(args.device, dense_feature_source="pooled"), batch, args.repeats)
    cpu = f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"forward of a batch of {args.batch} on {where} (median of {args.repeats}):")
    print(f"  SC-EGG            {1000 * full:9.1f} ms  ({args.batch / full:8.1f} images/s)")
    print(f"  pooled baseline   {1000 * pooled:9.1f} ms  (ratio SC-EGG / baseline = {full / pooled:.2f})")


if __name__ == "__main__":
    main()
