"""Does torch.compile pay for the stage-1 step? Eager against `torch.compile(Stage1Network)`
(inductor), the same step the trainer runs (L_S1, Eq. 16, and an RMSprop update), in float32 and
under bf16 autocast, in one process and interleaved.

    python benchmarks/bench_compile.py --threads 1              # CUB 7 x 7 x 512 layout
    python benchmarks/bench_compile.py --regions 196 --feature_dim 2048
    python benchmarks/bench_compile.py --threads 1 --precisions bf16 --processes 2 --clock cpu

`--processes N` runs the measurement in N fresh processes one after the other, all sharing one
inductor cache folder (`TORCHINDUCTOR_CACHE_DIR`, a new temporary one unless `--cache_dir` names
one): the first compiles from nothing, the later ones find inductor's FX-graph and AOTAutograd
caches warm, as a second training run on the same machine would. "compile" is the time from
building the compiled network to the end of its first two steps, less two compiled steps, as wall
time and as this process's CPU time (which leaves out inductor's C++ compile workers: it is the
warm-cache number). `--clock cpu` times the steps in CPU time too, which on a shared machine
counts work and not the wait for a core; the break-even step count uses the chosen clock.

The trainer keeps eager mode; this script is the evidence for that choice (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_scegg import SCEGGConfig, SCEGGModel  # noqa: E402
from modeling_scegg.modeling_scegg import stage1_loss_eq16  # noqa: E402
from modeling_scegg.training.stage1 import Stage1Network  # noqa: E402

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


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


def median_ms(step, batches, repeats: int, clock) -> float:
    for regions, labels in batches[:2]:  # warm-up (and compilation)
        step(regions, labels)
    times = []
    for i in range(repeats):
        regions, labels = batches[i % len(batches)]
        start = clock()
        step(regions, labels)
        times.append(clock() - start)
    return 1000 * statistics.median(times)


def measure(args) -> None:
    """Eager against compiled in this process, for each precision asked for."""
    clock = CLOCKS[args.clock]
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
          f"A={args.attributes} C={args.classes} B={args.batch_size}; steps timed in {args.clock} time; "
          f"inductor cache {os.environ.get('TORCHINDUCTOR_CACHE_DIR', '(default)')}")
    for name in args.precisions:
        dtype = PRECISIONS[name]
        eager = Stage1Network(model)
        start, start_cpu = time.perf_counter(), time.process_time()
        compiled_step = make_step(torch.compile(Stage1Network(model)), model, dtype)
        for regions, labels in batches[:2]:
            compiled_step(regions, labels)
        first_two = {"wall": time.perf_counter() - start, "cpu": time.process_time() - start_cpu}
        compiled_ms = median_ms(compiled_step, batches, args.repeats, clock)
        eager_ms = median_ms(make_step(eager, model, dtype), batches, args.repeats, clock)
        compile_s = {key: value - 2 * compiled_ms / 1000 for key, value in first_two.items()}
        print(f"stage-1 step {name}: eager {eager_ms:7.1f} ms, compiled {compiled_ms:7.1f} ms "
              f"(x{eager_ms / compiled_ms:.2f}); compile {compile_s['wall']:.1f} s wall, {compile_s['cpu']:.1f} s CPU "
              f"of this process; pays after {_break_even(compile_s[args.clock], eager_ms, compiled_ms)} steps "
              f"({args.clock} time)", flush=True)


def _break_even(compile_s: float, eager_ms: float, compiled_ms: float) -> str:
    saved_ms = eager_ms - compiled_ms
    return f"{1000 * compile_s / saved_ms:.0f}" if saved_ms > 0 else "never"


def run_processes(args, argv: list[str]) -> None:
    """`--processes N`: the measurement in N fresh processes sharing one inductor cache."""
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="bench-compile-inductor-"))
    for index in range(args.processes):
        state = "warm" if cache.is_dir() and any(cache.iterdir()) else "cold"
        print(f"-- process {index + 1} of {args.processes} ({state} cache {cache})", flush=True)
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
        subprocess.run([sys.executable, __file__, *argv, "--processes", "1"], env=env, check=True)  # the last flag wins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=int, default=49)
    parser.add_argument("--feature_dim", type=int, default=512)
    parser.add_argument("--attributes", type=int, default=312)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--precisions", nargs="+", choices=sorted(PRECISIONS), default=["fp32", "bf16"])
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--processes", type=int, default=1, help="fresh processes sharing one inductor cache")
    parser.add_argument("--cache_dir", help="the inductor cache folder of --processes (default: a new temporary one)")
    args = parser.parse_args()
    if args.processes > 1:
        run_processes(args, sys.argv[1:])
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    measure(args)


if __name__ == "__main__":
    main()
