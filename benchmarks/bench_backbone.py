"""Throughput of ResNet-101 region-feature extraction (random weights: speed does not depend on them).

Times one batch of random 448 x 448 images through preprocessing and the backbone, after a
one-image warm-up, and prints images/s. On a CPU this tells how long raw-image datasets take
to convert (CUB: 11788 images); on a GPU pass ``--autocast fp16`` or ``bf16``.

    PYTHONPATH=. python benchmarks/bench_backbone.py [--batch-size 8] [--crop-size 448] [--device cpu] [--autocast bf16]

(``PYTHONPATH=.`` is not needed once the package is installed, e.g. ``pip install -e .``.)
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from modeling_scegg.data.backbone import RegionFeatureExtractor, build_resnet101


def random_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=448)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--autocast", choices=["fp16", "bf16"], default=None)
    args = parser.parse_args()

    extractor = RegionFeatureExtractor(
        build_resnet101("random"), crop_size=args.crop_size, device=args.device, autocast=args.autocast
    )
    images = random_images(args.batch_size, args.crop_size)
    extractor(images[:1])  # warm-up: allocator, cuDNN / oneDNN kernel choice
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()

    start = time.perf_counter()
    pixels = extractor.preprocess(images)
    preprocessed = time.perf_counter()
    features = extractor.extract_pixel_values(pixels)
    done = time.perf_counter()

    total = done - start
    print(
        f"device={extractor.device} autocast={args.autocast} threads={torch.get_num_threads()} "
        f"batch={args.batch_size} crop={args.crop_size} regions={features.regions.shape[1:]}"
    )
    print(f"preprocess {preprocessed - start:.3f} s, backbone {done - preprocessed:.3f} s")
    print(f"{args.batch_size / total:.2f} images/s")


if __name__ == "__main__":
    main()
