"""Classify images of unseen classes with a trained SC-EGG checkpoint.

    python examples/predict.py MODEL FEATURES.npy          # region features (B, R, D) from the backbone
    python examples/predict.py MODEL --images a.jpg b.jpg [--backbone resnet101.pth]

MODEL is an output folder of train_stages.py or a Hub id. With --images, the ResNet-101 region
features are extracted first (the model must have been trained on the same backbone and crop).
"""
import argparse
import sys

import torch

from modeling_scegg.cli import main as scegg


def classify_images(model_name: str, images: list[str], backbone: str | None, top_k: int) -> None:
    from PIL import Image

    from modeling_scegg.data.backbone import RegionFeatureExtractor, build_resnet101
    from modeling_scegg.hub import load_model

    model = load_model(model_name).eval()
    extractor = RegionFeatureExtractor(build_resnet101(backbone))
    regions = extractor([Image.open(path).convert("RGB") for path in images]).regions
    with torch.no_grad():
        output = model(torch.as_tensor(regions, dtype=torch.float32))
    for path, scores in zip(images, output.logits):
        top = torch.topk(scores, k=min(top_k, len(scores)))
        print(path, [model.config.id2label[int(i)] for i in top.indices])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("features", nargs="?")
    parser.add_argument("--images", nargs="+")
    parser.add_argument("--backbone", help="torchvision ResNet-101 weights, or a transformers ResNet folder / Hub id")
    parser.add_argument("--top_k", type=int, default=5)
    args = parser.parse_args()
    if args.images:
        classify_images(args.model, args.images, args.backbone, args.top_k)
    elif args.features:
        sys.exit(scegg(["predict", args.model, args.features, "--top_k", str(args.top_k)]))
    else:
        parser.error("give FEATURES or --images")
