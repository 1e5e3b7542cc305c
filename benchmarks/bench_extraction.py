"""`scegg extract` throughput against the authors' extraction loop, measured in the same run.

Writes a small CUB-style benchmark to a temporary folder (random JPEGs of CUB's typical
500 x 375 px in ``CUB_200_2011/images/<class>/``, an ``att_splits.mat`` and a ``res101.mat``
listing them with the authors' absolute path prefix) and extracts it twice with the same random
ResNet-101 (the real architecture; speed does not depend on the weights), the same batch size
and threads:

* **ours**: :func:`modeling_scegg.data.extraction.extract_region_features`, the whole command:
  resumable .npy shards written batch by batch, then the HDF5, renamed into place;
* **reference**: the authors' ``preprocessing.py`` design, restated: a DataLoader over the
  pictures (PIL open, convert, the same preprocessing), every batch's maps appended to a list in
  RAM, concatenated and written to the HDF5 at the end (nothing resumable, RAM growing with N).

Both run in float32 (the authors' precision); ``ours`` is also timed under ``--autocast auto``
(the command's default: bf16 where the device runs it natively). Prints images/s, the ratio,
and the hours CUB's 11788 pictures take at that rate (an extrapolation from the measured rate).

    PYTHONPATH=. python benchmarks/bench_extraction.py [--images 24] [--crop-size 224] [--device cpu]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import torch
from PIL import Image

from modeling_scegg.data.backbone import ImagePreprocessor, build_resnet101, default_device
from modeling_scegg.data.extraction import extract_region_features, find_benchmark_files
from modeling_scegg.data.images import _ImageFiles

CUB_IMAGES = 11788
PREFIX = "/BS/Deep_Fragments/work/MSc/CUB_200_2011/"


def write_benchmark(root: Path, count: int) -> tuple[Path, Path]:
    """(data_dir, image_dir) of a 4-class CUB-style benchmark with `count` random pictures."""
    rng = np.random.default_rng(0)
    data_dir, image_dir = root / "data", root / "pictures"
    labels = np.arange(count) % 4
    listed = []
    for i, label in enumerate(labels):
        inside = f"CUB_200_2011/images/{label + 1:03d}.class_{label}/picture_{i:05d}.jpg"
        (image_dir / inside).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(image_dir / inside, quality=90)
        listed.append(PREFIX + inside)
    xlsa = data_dir / "xlsa17" / "data" / "CUB"
    xlsa.mkdir(parents=True)
    cell = np.empty((count, 1), dtype=object)
    cell[:, 0] = listed
    scipy.io.savemat(xlsa / "res101.mat", {"labels": (labels + 1).reshape(-1, 1).astype(float), "image_files": cell})
    index = np.arange(count)
    scipy.io.savemat(xlsa / "att_splits.mat", {
        "att": rng.random((5, 4)), "allclasses_names": np.array([[f"class_{c}"] for c in range(4)], dtype=object),
        "trainval_loc": (index[(labels < 3) & (index % 3 > 0)] + 1).reshape(-1, 1).astype(float),
        "test_seen_loc": (index[(labels < 3) & (index % 3 == 0)] + 1).reshape(-1, 1).astype(float),
        "test_unseen_loc": (index[labels == 3] + 1).reshape(-1, 1).astype(float)})
    return data_dir, image_dir


def reference(model, image_dir: Path, data_dir: Path, crop: int, batch: int, device: torch.device, out: Path) -> None:
    """The authors' loop: batches from a DataLoader, every map kept in RAM, one HDF5 write at the end."""
    files = find_benchmark_files("CUB", image_dir, data_dir)
    loader = torch.utils.data.DataLoader(_ImageFiles(image_dir, files.images, ImagePreprocessor(crop)), batch_size=batch)
    model = model.to(device).eval()
    maps = []
    with torch.no_grad():
        for pixels in loader:
            maps.append(model(pixels.to(device)).last_hidden_state.cpu().numpy())
    with h5py.File(out, "w") as h5:
        h5.create_dataset("feature_map", data=np.concatenate(maps))
        h5.create_dataset("labels", data=files.labels)


def timed(label: str, count: int, run) -> float:
    start = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    rate = count / (time.perf_counter() - start)
    print(f"{label:<34}{rate:>9.2f} images/s   CUB {CUB_IMAGES / rate / 3600:>7.2f} h (extrapolated)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args()
    logging.getLogger("modeling_scegg").setLevel(logging.ERROR)
    device = torch.device(args.device) if args.device else default_device()
    model = build_resnet101("random")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {args.images} pictures of 500 x 375 px, crop {args.crop_size}, "
          f"batch {args.batch_size}, random ResNet-101")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_dir, image_dir = write_benchmark(root, args.images)
        common = dict(crop_size=args.crop_size, batch_size=args.batch_size, device=device, chunk_size=args.batch_size * 2)

        output = data_dir / "CUB" / "feature_map_ResNet_101_CUB.hdf5"

        def ours(autocast) -> None:
            output.unlink(missing_ok=True)
            extract_region_features("CUB", image_dir, data_dir, model, **common, autocast=autocast)

        with torch.no_grad():  # warm-up: allocator, oneDNN / cuDNN kernel choice
            model.to(device)(torch.zeros(args.batch_size, 3, args.crop_size, args.crop_size, device=device))
        ref = timed("reference (authors' loop), float32", args.images,
                    lambda: reference(model, image_dir, data_dir, args.crop_size, args.batch_size, device,
                                      root / "reference.hdf5"))
        fp32 = timed("scegg extract, float32", args.images, lambda: ours(None))
        auto = timed("scegg extract, --autocast auto", args.images, lambda: ours("auto"))
    print(f"scegg extract / reference: {fp32 / ref:.2f}x (float32), {auto / ref:.2f}x (auto)")


if __name__ == "__main__":
    main()
