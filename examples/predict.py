"""Classify pictures of unseen classes with a trained SC-EGG checkpoint.

    python examples/predict.py MODEL bird.jpg more_birds/ [--czsl] [--top_k 5] [--output preds.csv]
    python examples/predict.py MODEL FEATURES.npy            # region features (B, R, D) from the backbone

MODEL is an output folder of train_stages.py or a Hub id. A model trained on an image folder
carries its ResNet region backbone; one trained on precomputed region features needs the backbone
they came from, once (`scegg attach-backbone MODEL WEIGHTS --output DIR`) or per call
(`--image_backbone WEIGHTS`). This is `scegg predict`: every flag is listed by `--help`, one row per
input (an error row for each unusable picture), exit status 1 when any input failed.
"""
import sys

from modeling_scegg.cli import main as scegg

if __name__ == "__main__":
    sys.exit(scegg(["predict", *sys.argv[1:]]))
