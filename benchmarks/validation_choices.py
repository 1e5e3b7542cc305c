"""The choices the defaults rest on, made on validation data only: each candidate setting trains
on the validation view of a dataset (val classes as pseudo-unseen, a fifth of train_sub held out
as seen) and is scored there; the test splits are never read.

    python benchmarks/validation_choices.py --datasets CUB SUN AWA2 --seeds 0 --output_dir outputs/validation_choices

Candidates per dataset: the published-pattern preset, the same with the attribute decoder at
stage3_lr (the behaviour before --decoder_lr; skipped where stage3_lr is already the published
dec_lr), and the paper preset. Data and schedule are those of benchmarks/accuracy.py. Prints the
view's CZSL Acc and GZSL H (uncalibrated, and with the offset that is best on the view) per
candidate; finished runs are reused.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from accuracy import DEFAULT_METADATA, SCHEDULE, STAGE3_EPOCHS, WIDTHS  # noqa: E402

from modeling_scegg.data.synthetic_layout import write_synthetic_benchmark  # noqa: E402
from modeling_scegg.training import (  # noqa: E402
    load_data,
    parse_training_args,
    train_and_evaluate,
    validation_view,
)
from modeling_scegg.training.arguments import read_preset  # noqa: E402
from modeling_scegg.training.classifiers import best_epochs  # noqa: E402
from modeling_scegg.training.state import RunPlan  # noqa: E402


def candidates(dataset: str) -> dict[str, list[str]]:
    ds = dataset.lower()
    published = read_preset(f"{ds}-published")["training"]
    found = {"published": ["--config", f"{ds}-published"], "paper": ["--config", f"{ds}-paper"]}
    if published["stage3_lr"] != published["decoder_lr"]:
        found["published, decoder at stage3_lr"] = ["--config", f"{ds}-published", "--decoder_lr", str(published["stage3_lr"])]
    return found


def view_scores(dataset: str, data_dir: Path, flags: list[str], seed: int, out: Path) -> dict:
    if (out / "view_scores.json").is_file():
        return json.loads((out / "view_scores.json").read_text())
    argv = ["--dataset", dataset, "--data_dir", str(data_dir), "--cache_dir", str(out.parents[1] / "cache"),
            "--output_dir", str(out), "--seed", str(seed), "--plots", "false", "--log_with", "none",
            "--calibration", "validation", *SCHEDULE, "--stage3_epochs", str(STAGE3_EPOCHS[dataset]), *flags,
            "--resume", str((out / "checkpoints").is_dir()).lower(), "--model_overrides", *WIDTHS]
    args = parse_training_args(argv)
    _, view_run = train_and_evaluate(args, validation_view(load_data(args), seed), plan=RunPlan.for_view(args))
    last = view_run.progress.scores.by_classifier_epoch[-1:]  # the fixed schedule's last classifier epoch
    scores = {"czsl_acc": last[0]["czsl_acc"], "gzsl_h": last[0]["gzsl_h"],
              "gzsl_h_calibrated": best_epochs(last, calibrated=True)["gzsl_h"]}
    (out / "view_scores.json").write_text(json.dumps(scores))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["CUB", "SUN", "AWA2"], choices=sorted(STAGE3_EPOCHS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--metadata_dir", default=str(DEFAULT_METADATA))
    parser.add_argument("--output_dir", default="outputs/validation_choices")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    table = {}
    for dataset in args.datasets:
        data_dir = Path(args.output_dir) / "data" / dataset
        if not (data_dir / dataset / f"feature_map_ResNet_101_{dataset}.hdf5").is_file():
            write_synthetic_benchmark(dataset, args.metadata_dir, data_dir)
        for name, flags in candidates(dataset).items():
            folder = f"{dataset}-{name.replace(' ', '_').replace(',', '')}"
            runs = [view_scores(dataset, data_dir, flags, seed, Path(args.output_dir) / "runs" / f"{folder}-seed{seed}")
                    for seed in args.seeds]
            table[f"{dataset} {name}"] = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
            print(f"{dataset} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in table[f'{dataset} {name}'].items()), flush=True)
    (Path(args.output_dir) / "validation_choices.json").write_text(json.dumps(table, indent=2))
    print(f"\n{'candidate (validation view)':<44}{'CZSL':>8}{'H':>8}{'H cal':>8}")
    for name, row in table.items():
        print(f"{name:<44}{row['czsl_acc']:>8.2f}{row['gzsl_h']:>8.2f}{row['gzsl_h_calibrated']:>8.2f}")


if __name__ == "__main__":
    main()
