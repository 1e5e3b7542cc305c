"""What the accuracy benchmarks share (`accuracy.py`, `awa2_seen_side.py`): the synthetic data
in a real layout, one `scegg train` run in a subprocess with its wall time, and mean ± std.

A run lives in its own folder and is reused once its `results.json` exists; its wall time (the
whole `scegg train` process: the validation-view runs of the calibration and of the preset
choice included) is kept beside it in `wall_seconds.json`, so a reused run still reports it.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modeling_scegg.data.synthetic import SyntheticConfig  # noqa: E402
from modeling_scegg.data.synthetic_layout import write_synthetic_benchmark  # noqa: E402

DEFAULT_METADATA = REPO.parent / "shared" / "data"
# network widths cut so that a run takes minutes on two CPU cores; every other value comes from the preset
WIDTHS = ["encoder_hidden_dim=512", "generator_hidden_dim=512", "critic_hidden_dim=512", "decoder_hidden_dim=512",
          "regression_hidden_dim=512"]


# The proxies the benchmarks compare, by name: SyntheticConfig fields and regions per side of the
# grid. "plain" is the generator's default; each of the next eight changes one property of it (see
# modeling_scegg.data.synthetic); "picture-like" is the setting earlier tables used, "pictures"
# all four properties of pictures at once, the proxy on which SC-EGG ranks ahead of TF-VAEGAN on
# every layout as in the paper (benchmarks/README.md, "Which properties rank SC-EGG").
PROXIES: dict[str, tuple[dict[str, float], int]] = {
    "plain": ({}, 4),
    "appearance": ({"class_appearance": 0.3}, 4),
    "signature": ({"class_signature": 0.3}, 4),
    "gain-0.2": ({"image_gain": 0.2}, 4),
    "gain-0.5": ({"image_gain": 0.5}, 4),
    "scene-0.5": ({"scene_clutter": 0.5}, 4),
    "scene-1.0": ({"scene_clutter": 1.0}, 4),
    "grid7": ({}, 7),
    "picture-like": ({"class_appearance": 0.3, "class_signature": 0.3}, 4),
    "strong": ({"class_appearance": 0.5, "class_signature": 0.5}, 4),
    "pictures": ({"class_appearance": 0.3, "class_signature": 0.3, "image_gain": 0.2, "scene_clutter": 1.0}, 4),
    "pictures-gain0.5": ({"class_appearance": 0.3, "class_signature": 0.3, "image_gain": 0.5, "scene_clutter": 1.0}, 4),
}


def synthetic_data(dataset: str, metadata_dir: str, root: Path, render: dict, fraction: float = 1.0,
                   grid: int = 4, feature_dim: int = 128) -> Path:
    """The folder holding `dataset` rendered with these settings (written once; every setting
    keys the folder, so different proxies never share data)."""
    fingerprint = json.dumps([dataset, grid, feature_dim, fraction, render], sort_keys=True)
    folder = root / f"{dataset}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:8]}"
    if not (folder / dataset / f"feature_map_ResNet_101_{dataset}.hdf5").is_file():
        write_synthetic_benchmark(dataset, metadata_dir, folder, grid=(grid, grid), feature_dim=feature_dim,
                                  render=SyntheticConfig(**render), fraction=fraction)
    return folder


def train_run(argv: list[str], out: Path, code: str | Path | None = None) -> dict:
    """`scegg train --output_dir out *argv` in a subprocess (clean memory; `code`: another
    checkout of the package), or the finished run's results; `wall_seconds` added to them."""
    if not (out / "results.json").is_file():
        env = {**os.environ, "PYTHONPATH": str(code or REPO), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
        flags = ["--output_dir", str(out), "--resume", str((out / "checkpoints").is_dir()).lower(), *argv]
        out.parent.mkdir(parents=True, exist_ok=True)
        log = out.with_suffix(".log")
        start = time.perf_counter()
        with open(log, "w") as stream:
            status = subprocess.call([sys.executable, "-m", "modeling_scegg.cli", "train", *flags], env=env,
                                    stdout=stream, stderr=subprocess.STDOUT, cwd=code or REPO)
        if status:
            raise RuntimeError(f"training failed (exit {status}); see {log}")
        (out / "wall_seconds.json").write_text(json.dumps(time.perf_counter() - start))
    results = json.loads((out / "results.json").read_text())
    wall = out / "wall_seconds.json"
    return {**results, "wall_seconds": json.loads(wall.read_text())} if wall.is_file() else results


def chosen_preset(results: dict) -> str | None:
    """The preset `--preset_choice` trained with, None for a run that did not choose."""
    return results.get("preset_choice", {}).get("chosen")


def summarise(runs: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and sample std (0 for one run) of every numeric key all runs share."""
    keys = [k for k in runs[0] if all(isinstance(r.get(k), int | float) for r in runs)]
    return {k: (statistics.mean(r[k] for r in runs), statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0)
            for k in keys}
