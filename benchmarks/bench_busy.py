"""Training and extraction on a quiet machine and next to one busy process, per OpenMP setting.

torch's CPU kernels run on libgomp (GNU OpenMP). By default its threads spin for up to
GOMP_SPINCOUNT = 300000 pause loops before sleeping, so a thread that lost its core to another
process stalls the others at every parallel region while they burn the cores it needs. This
script measures how each setting trades the quiet speed against the busy slow-down:

* the two workloads, each in its own process through the real entry point
  (``python -m modeling_scegg.cli``), so that libgomp reads the setting when torch loads:
  ``train``, a short training run on the built-in synthetic data (its networks and batches,
  1040 images; 40 / 20 stage-1 / stage-2 steps, one stage-3 and one classifier epoch), and ``extract``,
  ``scegg extract`` of generated CUB-style pictures (500 x 375 px JPEGs, crop 224) with a random
  ResNet-101 (speed does not depend on the weights);
* ``quiet``: nothing else started; ``busy``: next to one ``python -c "while True: pass"`` that
  this script starts and stops;
* every setting, quiet and busy, interleaved in one round, the order rotated between rounds, so
  that a change in the other load of a shared machine spreads over all settings; the load average
  before each measurement is printed with it. The table gives medians over the rounds.

The time is the work after start-up: the stage seconds of ``results.json`` for training, the time
from the ``extracting ...`` log line to the end for extraction (imports and building the network
are the same in every setting).

    python benchmarks/bench_busy.py [--rounds 2] [--settings default passive spin1e4 threads1 package]
    python benchmarks/bench_busy.py --conditions quiet   # a machine other jobs already keep busy
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extraction import write_benchmark  # noqa: E402

CORES = len(os.sched_getaffinity(0))
# Every explicit setting names all three variables, so that the package's own default (which sets
# only what the user left unset) cannot leak in; "package" sets nothing and shows that default.
SETTINGS = {
    "default": {"OMP_NUM_THREADS": str(CORES), "GOMP_SPINCOUNT": "300000"},  # libgomp's own default
    "passive": {"OMP_NUM_THREADS": str(CORES), "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"},
    "spin1e5": {"OMP_NUM_THREADS": str(CORES), "GOMP_SPINCOUNT": "100000"},
    "spin1e4": {"OMP_NUM_THREADS": str(CORES), "GOMP_SPINCOUNT": "10000"},
    "spin1e3": {"OMP_NUM_THREADS": str(CORES), "GOMP_SPINCOUNT": "1000"},
    "threads1": {"OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": "300000"},
    "package": {},
}
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "OMP_PROC_BIND")
TRAIN_FLAGS = ["--synthetic_overrides", "split_sizes=[640,200,200]", "--stage1_iters", "40", "--stage2_iters", "20",
               "--stage3_epochs", "1", "--classifier_epochs", "1", "--plots", "false", "--log_with", "none",
               "--calibration", "none", "--seed", "0"]
SHORTEST = ["--stage1_iters", "1", "--stage2_iters", "1"]  # the untimed first run


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def child_env(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return {**env, **SETTINGS[setting], "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def run_train(root: Path, env: dict[str, str], flags: tuple[str, ...] = ()) -> float:
    """Seconds of the stages of a short training run (results.json), start-up excluded."""
    out = root / "train-out"
    command = [sys.executable, "-m", "modeling_scegg.cli", "train", *TRAIN_FLAGS, *flags, "--output_dir", str(out),
               "--cache_dir", str(root / "cache")]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = json.loads((out / "results.json").read_text())["stage_seconds"]
    return sum(seconds.values())


def run_extract(root: Path, env: dict[str, str], data_dir: Path, image_dir: Path) -> float:
    """Seconds from the `extracting ...` log line to the end of `scegg extract`."""
    for old in (data_dir / "CUB").glob("*"):
        subprocess.run(["rm", "-rf", str(old)], check=True)
    command = [sys.executable, "-m", "modeling_scegg.cli", "extract", "CUB", str(image_dir), "--data_dir",
               str(data_dir), "--backbone", "random", "--crop_size", "224", "--batch_size", "8"]
    done = subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.time()
    line = next(text for text in done.stderr.splitlines() if " extracting " in text)
    start = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return end - start


def measure(workload, setting: str, busy: bool) -> tuple[float, float]:
    """(seconds, 1-minute load average before) of one run, next to a spinning process if busy."""
    load = os.getloadavg()[0]
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        return workload(child_env(setting)), load
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def print_table(name: str, results: dict, settings: list[str], conditions: list[bool]) -> None:
    print(f"\n{name}: median seconds (1-minute load average before the runs, min-max)")
    columns = ["quiet s"] * (False in conditions) + ["busy s"] * (True in conditions)
    ratios = ["busy/quiet"] * (len(conditions) == 2)
    print(f"{'setting':<10}" + "".join(f"{c:>9}" for c in columns) + "".join(f"{c:>12}" for c in ratios)
          + f"{'/ default':>11}  load avg")
    median = {key: statistics.median(s for s, _ in runs) for key, runs in results.items()}
    first = conditions[0]
    for setting in settings:
        cells = "".join(f"{median[(setting, busy)]:>9.1f}" for busy in sorted(set(conditions)))
        if ratios:
            cells += f"{median[(setting, True)] / median[(setting, False)]:>12.2f}"
        relative = median[(setting, first)] / median[("default", first)] if ("default", first) in median else float("nan")
        loads = [load for busy in conditions for _, load in results[(setting, busy)]]
        print(f"{setting:<10}{cells}{relative:>11.2f}  {min(loads):.1f}-{max(loads):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=["default", "passive", "spin1e4", "threads1", "package"],
                        choices=sorted(SETTINGS))
    parser.add_argument("--workloads", nargs="+", default=["train", "extract"], choices=["train", "extract"])
    parser.add_argument("--images", type=int, default=16, help="pictures extracted per run")
    parser.add_argument("--conditions", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"],
                        help="quiet: no process of ours beside the run; busy: one spinning process beside it")
    args = parser.parse_args()
    print(f"machine: {cpu_name()}, {CORES} cores available, {os.cpu_count()} online; "
          f"{args.rounds} rounds; settings: " + "; ".join(f"{s} {SETTINGS[s] or '(nothing set)'}" for s in args.settings))
    with tempfile.TemporaryDirectory(prefix="bench-busy-") as tmp:
        root = Path(tmp)
        data_dir, image_dir = write_benchmark(root, args.images)
        workloads = {"train": lambda env: run_train(root, env),
                     "extract": lambda env: run_extract(root, env, data_dir, image_dir)}
        if "train" in args.workloads:
            run_train(root, child_env("threads1"), tuple(SHORTEST))  # converts the synthetic data into the cache
        results: dict[str, dict] = {name: {} for name in args.workloads}
        for round_index in range(args.rounds):
            shift = round_index % len(args.settings)
            for name in args.workloads:
                for setting in args.settings[shift:] + args.settings[:shift]:
                    conditions = [c == "busy" for c in args.conditions]
                    for busy in (conditions if round_index % 2 == 0 else conditions[::-1]):
                        seconds, load = measure(workloads[name], setting, busy)
                        results[name].setdefault((setting, busy), []).append((seconds, load))
                        print(f"round {round_index} {name:<8}{setting:<10}{'busy' if busy else 'quiet':<6}"
                              f"{seconds:8.1f} s  load {load:.1f}", flush=True)
    for name in args.workloads:
        print_table(name, results[name], args.settings, [c == "busy" for c in args.conditions])


if __name__ == "__main__":
    main()
