"""Peak memory of `scegg predict` over folders of large photos: flat in their number and size.

`scegg predict` reads each picture with `load_picture` (a large JPEG decoded at a reduced scale,
never below twice the resize size) and preprocesses it at once, so a batch holds 448 x 448 crops,
not photos. This script generates folders of large photos (smooth random colour fields saved as
JPEG, and PNG for a format without reduced decoding; nothing is committed), runs `scegg predict`
on each in a fresh process with a small model (a tiny random ResNet at the default 448 crop, so
the backbone's own memory does not hide the pictures'), and prints every process's peak RSS
(VmHWM, Linux) against the reference measured in the same run: the same command on one 0.3 MP
picture.

    PYTHONPATH=. python benchmarks/bench_predict_memory.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a child would report the peak of the
# forked parent (which has just generated 40 MP photos) when that is higher than its own
CHILD = """
import sys
from modeling_scegg.cli import main
code = main(sys.argv[1:])
peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("PEAK_KB", peak, "EXIT", code)
"""


def write_model(folder: Path) -> Path:
    """A tiny SCEGGForImageClassification with a random ResNet backbone, at the default 448 crop."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    from modeling_scegg import SCEGGConfig, SCEGGImageProcessor, SCEGGModel
    from modeling_scegg.export import attach_backbone, save_model

    torch.manual_seed(0)
    backbone = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 12], depths=[1, 1, 1, 1],
                                        layer_type="basic")).eval()
    config = SCEGGConfig(feature_dim=12, num_regions=196, num_attributes=7, word_dim=6, num_classes=6,
                         seen_class_ids=[0, 2, 3, 5], unseen_class_ids=[1, 4], regression_hidden_dim=16,
                         encoder_hidden_dim=20, generator_hidden_dim=18, critic_hidden_dim=14, decoder_hidden_dim=22)
    model = SCEGGModel(config)
    model.set_class_semantics(torch.rand(6, 7), torch.randn(7, 6))
    model.scen.fit_scaler(torch.rand(30, 12))
    processor = SCEGGImageProcessor()
    return save_model(attach_backbone(model.eval(), backbone, processor), folder, processor)


def write_photos(folder: Path, count: int, megapixels: float, kind: str, seed: int = 0) -> Path:
    """`count` photo-sized pictures (4:3) of smooth random colour, as JPEG or PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        photo = coarse.resize((width, height), Image.BILINEAR)
        photo.save(folder / f"photo_{i}.{'jpg' if kind == 'jpeg' else 'png'}", quality=90)
    return folder


def peak_rss_mb(model: Path, inputs: Path, batch_size: int, output: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `scegg predict` process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "predict", str(model), str(inputs), "--batch_size",
                           str(batch_size), "--output", str(output)], env=env, capture_output=True, text=True, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("PEAK_KB"))
    if not line.endswith("EXIT 0"):
        raise RuntimeError(f"predict failed: {line}\n{done.stderr[-2000:]}")
    return int(line.split()[1]) / 1024, time.perf_counter() - start


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 and 24 MP only, fewer configurations")
    args = parser.parse_args()
    configurations = ([("jpeg", 12, 2, 8), ("jpeg", 12, 8, 8), ("jpeg", 24, 8, 8)] if args.quick else
                      [("jpeg", 12, 2, 1), ("jpeg", 12, 2, 8), ("jpeg", 12, 8, 1), ("jpeg", 12, 8, 8),
                       ("jpeg", 40, 2, 8), ("jpeg", 40, 8, 1), ("jpeg", 40, 8, 8), ("png", 24, 2, 8), ("png", 24, 8, 8)])
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="scegg-predict-memory-") as tmp:
        root = Path(tmp)
        model = write_model(root / "model")
        reference, seconds = peak_rss_mb(model, write_photos(root / "reference", 1, 0.3, "jpeg"), 1, root / "ref.csv")
        print(f"reference: 1 picture of 0.3 MP, --batch_size 1: peak RSS {reference:.0f} MiB ({seconds:.1f} s)\n")
        print(f"{'format':<6} {'MP':>4} {'pictures':>8} {'batch':>5} {'peak MiB':>9} {'x ref':>6} {'seconds':>8}")
        for kind, megapixels, count, batch_size in configurations:
            folder = root / f"{kind}_{megapixels}_{count}"
            if not folder.is_dir():
                write_photos(folder, count, megapixels, kind)
            peak, seconds = peak_rss_mb(model, folder, batch_size, root / "out.csv")
            print(f"{kind:<6} {megapixels:>4} {count:>8} {batch_size:>5} {peak:>9.0f} {peak / reference:>6.2f} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
