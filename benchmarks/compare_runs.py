"""Whether two training runs gave the same model and the same numbers, bit for bit.

    python benchmarks/compare_runs.py RUN_A RUN_B

A restructuring of the training code that claims "behaviour unchanged" runs the same command
before and after (same seed, same flags, different --output_dir) and compares the folders: every
tensor of model.safetensors must be equal (`torch.equal`, so NaN-free and bitwise for floats),
and results.json must agree on everything but what legitimately differs between two runs (the
stage timings and the output folder). The validation view's model (RUN/validation) is compared
too when both runs have one. Exit status 0 when identical, 1 otherwise, with the differences.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

# what two identical runs may still differ in: wall-clock seconds and where they wrote
VOLATILE = {"stage_seconds": None, "training_args": ("output_dir",)}


def tensor_differences(a: Path, b: Path) -> list[str]:
    """Names of tensors that differ (or exist on one side only) between two safetensors files."""
    left, right = load_file(str(a)), load_file(str(b))
    differ = [f"only in one file: {name}" for name in sorted(set(left) ^ set(right))]
    for name in sorted(set(left) & set(right)):
        if left[name].dtype != right[name].dtype or not torch.equal(left[name], right[name]):
            same_shape = left[name].shape == right[name].shape
            diff = (left[name].double() - right[name].double()).abs().max().item() if same_shape else "shape"
            differ.append(f"{name}: max |diff| {diff}")
    return differ


def _stable(results: dict) -> dict:
    """results.json without the fields that two identical runs may differ in."""
    kept = {}
    for key, value in results.items():
        if key in VOLATILE and VOLATILE[key] is None:
            continue
        if key in VOLATILE:
            value = {k: v for k, v in value.items() if k not in VOLATILE[key]}
        kept[key] = value
    return kept


def result_differences(a: Path, b: Path) -> list[str]:
    left, right = _stable(json.loads(a.read_text())), _stable(json.loads(b.read_text()))
    return [f"results.json[{key!r}]: {left.get(key)!r} != {right.get(key)!r}"
            for key in sorted(set(left) | set(right)) if left.get(key) != right.get(key)]


def compare(run_a: Path, run_b: Path) -> list[str]:
    """Every difference between two run folders (and their validation views' models)."""
    differences = tensor_differences(run_a / "model.safetensors", run_b / "model.safetensors")
    differences += result_differences(run_a / "results.json", run_b / "results.json")
    view_a, view_b = run_a / "validation" / "model.safetensors", run_b / "validation" / "model.safetensors"
    if view_a.is_file() and view_b.is_file():
        differences += [f"validation view: {d}" for d in tensor_differences(view_a, view_b)]
        differences += [f"validation view: {d}" for d in result_differences(view_a.with_name("results.json"),
                                                                             view_b.with_name("results.json"))]
    return differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    differences = compare(args.run_a, args.run_b)
    tensors = len(load_file(str(args.run_a / "model.safetensors")))
    if differences:
        print("\n".join(differences))
        print(f"DIFFERENT: {len(differences)} difference(s)")
        return 1
    print(f"IDENTICAL: {tensors} tensors of model.safetensors equal (torch.equal), results.json equal "
          f"apart from {sorted(VOLATILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
