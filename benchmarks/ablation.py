"""The paper's ablation (Table 2) on the built-in synthetic data, over several seeds.

    python benchmarks/ablation.py --seeds 0 1 2 --output_dir outputs/ablation

Each variant is a full, honest (fixed-schedule) run of examples/train_stages.py with the synthetic
preset; only the switch that the paper removes changes. Prints mean and standard deviation of
CZSL Acc and GZSL U / S / H per variant and writes them to ablation.json. Finished runs are
reused, so an interrupted benchmark continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from modeling_scegg.training import parse_training_args, run_pipeline

VARIANTS = {
    "SC-EGG (full)": [],
    "w/o L_LCE": ["lambda_l=0"],
    "w/o L_GCE": ["lambda_g=0"],
    "w/o L_SCR": ["stage2_objective=cross_entropy"],
    "w/o L_EGS": ["lambda_s=0", "lambda_u=0"],
    "TF-VAEGAN baseline (pooled features, no SCEN)": ["dense_feature_source=pooled", "lambda_s=0", "lambda_u=0"],
}
METRICS = ("czsl_acc", "gzsl_unseen", "gzsl_seen", "gzsl_h")


def run_variant(name: str, overrides: list[str], seed: int, root: Path, extra: list[str]) -> dict:
    out = root / f"{name.split(' (')[0].replace('/', '').replace(' ', '_')}-seed{seed}"
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    argv = ["--output_dir", str(out), "--seed", str(seed), "--plots", "false", "--log_with", "none",
            "--resume", str((out / "checkpoints").is_dir()).lower(), *extra]
    if overrides:
        argv += ["--model_overrides", *overrides]
    return run_pipeline(parse_training_args(argv))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", default="outputs/ablation")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="subset of variant names")
    parser.add_argument("extra", nargs="*", help="more training flags after --, e.g. -- --stage3_epochs 10")
    args = parser.parse_args()
    root = Path(args.output_dir)
    table = {}
    for name in args.variants:
        runs = []
        for seed in args.seeds:
            start = time.perf_counter()
            results = run_variant(name, VARIANTS[name], seed, root, args.extra)
            runs.append({k: results[k] for k in METRICS})
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {results[k]:.2f}" for k in METRICS)
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)
        table[name] = {k: (statistics.mean(r[k] for r in runs),
                           statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0) for k in METRICS}
        table[name]["runs"] = runs
    (root / "ablation.json").write_text(json.dumps(table, indent=2))
    print(f"\n{'variant':<48}" + "".join(f"{m:>16}" for m in METRICS))
    for name, row in table.items():
        print(f"{name:<48}" + "".join(f"{row[m][0]:>9.2f} ± {row[m][1]:<4.2f}" for m in METRICS))


if __name__ == "__main__":
    main()
