"""examples/predict.py end to end: pictures -> ResNet-101 regions -> a saved CUB-sized model."""
import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from conftest import REPO_ROOT
from modeling_scegg import SCEGGConfig, SCEGGModel


def test_predict_example_classifies_images(tmp_path):
    config = SCEGGConfig(encoder_hidden_dim=64, generator_hidden_dim=64, critic_hidden_dim=64,
                         decoder_hidden_dim=64, regression_hidden_dim=32)  # CUB sizes: R=196, D=2048
    model = SCEGGModel(config)
    model.set_class_semantics(torch.rand(config.num_classes, config.num_attributes))
    model.save_pretrained(tmp_path / "model")
    image = tmp_path / "bird.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(image)
    command = [sys.executable, str(REPO_ROOT / "examples" / "predict.py"), str(tmp_path / "model"), str(image),
               "--top_k", "3"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "no region backbone" in refused.stderr, "a random backbone must be asked for"
    result = subprocess.run(command + ["--image_backbone", "random"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["file"] == str(image) and row["error"] == ""
    assert [p["label"][:6] for p in row["predictions"]] == ["class_"] * 3
