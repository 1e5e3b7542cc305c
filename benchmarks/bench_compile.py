"""Does torch.compile pay for the stage-1 step? Eager against `torch.compile(Stage1Network)`
(inductor), the same step the trainer runs (L_S1, Eq. 16, and an RMSprop update), in float32 and
under bf16 autocast, in one process and interleaved.

    python benchmarks/bench_compile.py --threads 1              # CUB 7 x 7 x 512 layout
    python benchmarks/bench_compile.py --regions 196 --feature_dim 2048

The trainer keeps eager mode; this script is the evidence for that choice (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_scegg import SCEGGConfig, SCEGGModel  # noqa: E402
from modeling_scegg.modeling_scegg import stage1_loss_eq16  # noqa: E402
from modeling_scegg.training.stage1 import Stage1Network  # noqa: E402


def make_step(network: torch.nn.Module, model: SCEGGModel, dtype: torch.dtype | None):
    optimizer = torch.optim.RMSprop(network.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    seen = model.seen_class_ids

    def step(regions: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            local, global_ = network(regions)
        loss = stage1_loss_eq16(local.float(), global_.float(), labels, 1.0, 1.0, seen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def median_ms(step, batches, repeats: int) -> float:
    for regions, labels in batches[:2]:  # warm-up (and compilation)
        step(regions, labels)
    times = []
    for i in range(repeats):
        regions, labels = batches[i % len(batches)]
        start = time.perf_counter()
        step(regions, labels)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=int, default=49)
    parser.add_argument("--feature_dim", type=int, default=512)
    parser.add_argument("--attributes", type=int, default=312)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seen = list(range(0, args.classes, 4)) + [c for c in range(args.classes) if c % 4 and c % 5]
    config = SCEGGConfig(num_regions=args.regions, feature_dim=args.feature_dim, num_attributes=args.attributes,
                         num_classes=args.classes, seen_class_ids=sorted(set(seen)),
                         unseen_class_ids=sorted(set(range(args.classes)) - set(seen)))
    model = SCEGGModel(config)
    model.set_class_semantics(torch.rand(args.classes, args.attributes), torch.randn(args.attributes, config.word_dim))
    labels = torch.tensor(config.seen_class_ids)
    batches = [(torch.rand(args.batch_size, args.regions, args.feature_dim),
                labels[torch.randint(len(labels), (args.batch_size,))]) for _ in range(4)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; R={args.regions} D={args.feature_dim} "
          f"A={args.attributes} C={args.classes} B={args.batch_size}")
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        eager = Stage1Network(model)
        compiled = torch.compile(Stage1Network(model))
        start = time.perf_counter()
        compiled_ms = median_ms(make_step(compiled, model, dtype), batches, args.repeats)
        compile_s = time.perf_counter() - start - compiled_ms * args.repeats / 1000
        eager_ms = median_ms(make_step(eager, model, dtype), batches, args.repeats)
        print(f"stage-1 step {name}: eager {eager_ms:7.1f} ms, compiled {compiled_ms:7.1f} ms "
              f"(x{eager_ms / compiled_ms:.2f}; compile + warm-up {compile_s:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
