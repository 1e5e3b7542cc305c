"""Feature-store benchmark: convert a CUB-sized synthetic set, then compare training read paths.

Steps, each in its own subprocess so that its peak resident memory (``ru_maxrss``) is its own:

1. ``convert``: render CUB's shapes (11788 images, R = 196, D = 2048, ~9.5 GB of float16) with
   the synthetic generator and stream them into the Arrow cache;
2. ``reader``: one shuffled epoch in batches of 64 through ``RegionFeatureReader.iter_batches``
   (the training path);
3. ``fast_gather``: the best pure-Arrow path: ``Dataset.data.fast_gather`` (one zero-copy slice per
   row of the memory-mapped table), then the values of each slice copied into one numpy batch;
4. ``torch``: the same shuffled batches through ``Dataset.with_format("torch")`` (what one would
   write by default), for ``--torch_batches`` batches (it is much slower);
5. ``numpy``: the same through ``with_format("numpy")``, for reference.

``peak_rss_mib`` is the step's ``ru_maxrss``; it includes the pages of memory-mapped files the
step touched, which is why the Arrow paths grow with the rows they read and the pread-based
reader does not. ``import_rss_mib`` is the resident memory after the imports (torch etc.).

Run: ``python benchmarks/bench_data.py [--num_images 11788] [--cache_dir DIR] [--keep]``.
The cache is deleted afterwards unless ``--keep``. Reads are from the page cache when RAM allows
(the file was just written), so the numbers are CPU/memcpy-bound, not disk-bound.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STEPS = ("convert", "reader", "fast_gather", "torch", "numpy")


def _memory() -> dict[str, float]:
    """Peak RSS of this process plus the current anonymous / file-backed split (MiB)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    def mib(key):
        return float(status[key].split()[0]) / 1024 if key in status else float("nan")
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_anon_mib": mib("RssAnon"),
            "rss_file_mib": mib("RssFile")}


def _dataset(args):
    from modeling_scegg.data import SyntheticConfig, load_zsl_dataset

    config = SyntheticConfig.cub_size(num_images=args.num_images)
    return load_zsl_dataset("synthetic", cache_dir=args.cache_dir, synthetic_config=config)


def _all_rows(ds):
    from datasets import concatenate_datasets

    return concatenate_datasets([ds.splits[s] for s in ("train", "test_seen", "test_unseen")])


def _batches(num_rows: int, batch_size: int, limit: int | None, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(num_rows)
    batches = [order[i : i + batch_size] for i in range(0, num_rows, batch_size)]
    return batches[:limit] if limit else batches


def step_convert(args) -> dict:
    start = time.perf_counter()
    ds = _dataset(args)
    seconds = time.perf_counter() - start
    rows = sum(len(ds.splits[s]) for s in ("train", "test_seen", "test_unseen"))
    size = sum(p.stat().st_size for p in Path(args.cache_dir).rglob("*.arrow"))
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "arrow_gib": size / 2**30,
            "shape": [ds.num_regions, ds.feature_dim]}


def step_reader(args) -> dict:
    from modeling_scegg.data import RegionFeatureReader

    full = _all_rows(_dataset(args))
    reader = RegionFeatureReader(full)
    start, rows, checksum = time.perf_counter(), 0, 0.0
    for features, labels in reader.iter_batches(args.batch_size, shuffle=True, seed=0):
        rows += len(labels)
        checksum += float(features[:, 0, 0].astype(np.float32).sum())
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "dtype": str(features.dtype), "checksum": checksum}


def step_fast_gather(args) -> dict:
    from modeling_scegg.data.store import REGION_COLUMN, region_values

    full = _all_rows(_dataset(args))
    num_regions, feature_dim = full.features[REGION_COLUMN].shape
    table = full.data
    start, rows = time.perf_counter(), 0
    for batch in _batches(len(full), args.batch_size, None):
        gathered = table.fast_gather(batch)[REGION_COLUMN]
        features = np.empty((len(batch), num_regions, feature_dim), dtype=np.float16)
        done = 0
        for chunk in gathered.chunks:
            values = region_values(chunk, num_regions, feature_dim).to_numpy(zero_copy_only=True)
            features[done : done + len(chunk)] = values.reshape(len(chunk), num_regions, feature_dim)
            done += len(chunk)
        rows += len(batch)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "dtype": str(features.dtype)}


def _formatted(args, kind: str) -> dict:
    full = _all_rows(_dataset(args)).with_format(kind)
    batches = _batches(len(full), args.batch_size, args.torch_batches)
    start, rows = time.perf_counter(), 0
    for batch in batches:
        features = full[batch.tolist()]["region_features"]
        rows += len(batch)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "dtype": str(features.dtype)}


def run_step(args) -> None:
    import modeling_scegg.data  # noqa: F401  (measure the imports' memory before the step)

    imported = _memory()["rss_anon_mib"] + _memory()["rss_file_mib"]
    steps = {"reader": step_reader, "convert": step_convert, "fast_gather": step_fast_gather}
    result = steps.get(args.step, lambda a: _formatted(a, args.step))(args)
    result.update(_memory())
    result["import_rss_mib"] = imported
    print("RESULT " + json.dumps(result))


def _child(step: str, args) -> dict:
    command = [sys.executable, __file__, "--step", step, "--num_images", str(args.num_images), "--cache_dir", str(args.cache_dir),
               "--batch_size", str(args.batch_size), "--torch_batches", str(args.torch_batches)]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    line = next(text for text in completed.stdout.splitlines() if text.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=11788, help="total images (CUB: 11788)")
    parser.add_argument("--cache_dir", type=Path, default=None, help="where to write the Arrow cache (default: a temp dir)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--torch_batches", type=int, default=40, help="batches timed for the slow formatted paths")
    parser.add_argument("--keep", action="store_true", help="keep the converted cache")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        run_step(args)
        return
    temporary = args.cache_dir is None
    args.cache_dir = Path(tempfile.mkdtemp(prefix="scegg-bench-")) if temporary else args.cache_dir
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.cache_dir).free
    needed = args.num_images * 196 * 2048 * 2 * 1.05
    if free < needed:
        raise SystemExit(f"{args.cache_dir}: {free / 2**30:.1f} GiB free, the benchmark needs about {needed / 2**30:.1f} GiB")
    try:
        results = {}
        for step in STEPS:
            results[step] = _child(step, args)
            cells = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in results[step].items())
            print(f"{step:8s} " + "  ".join(cells),
                  flush=True)
        ratio = results["reader"]["rows_per_s"] / results["torch"]["rows_per_s"]
        print(f"reader / with_format('torch') rows/s ratio: {ratio:.1f}x")
        for other in ("fast_gather", "numpy"):
            print(f"reader / {other} rows/s ratio: {results['reader']['rows_per_s'] / results[other]['rows_per_s']:.1f}x")
    finally:
        if not args.keep:
            _remove_cache(args, temporary)


def _remove_cache(args, temporary: bool) -> None:
    """Delete what this run converted (the whole temp dir, or only its folder in a given cache)."""
    if temporary:
        shutil.rmtree(args.cache_dir, ignore_errors=True)
        return
    from modeling_scegg.data import SyntheticConfig

    folder = args.cache_dir / f"synthetic-{SyntheticConfig.cub_size(num_images=args.num_images).fingerprint()}"
    shutil.rmtree(folder, ignore_errors=True)
    Path(str(folder) + ".lock").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
