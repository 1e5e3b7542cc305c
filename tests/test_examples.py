"""examples/predict.py end to end: pictures -> ResNet-101 regions -> a saved CUB-sized model."""
import json
import subprocess
import sys

import numpy as np
import torch
from conftest import REPO_ROOT
from PIL import Image

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


def test_train_stages_example_is_scegg_train(tmp_path):
    """examples/train_stages.py calls the public stage API in order; `scegg train` runs the same
    functions, so the same flags give the same model and numbers."""
    from test_training_pipeline import tiny_argv

    from modeling_scegg.training import parse_training_args, run_pipeline

    extra = ("--stage3_epochs", "1", "--plots", "false")
    example = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "train_stages.py"),
                              *tiny_argv(tmp_path / "example", tmp_path / "cache", *extra)],
                             capture_output=True, text=True, timeout=600)
    assert example.returncode == 0, example.stderr[-3000:]
    assert "CZSL Acc" in example.stdout
    reference = run_pipeline(parse_training_args(tiny_argv(tmp_path / "train", tmp_path / "cache", *extra)))
    produced = json.loads((tmp_path / "example" / "results.json").read_text())
    for key in ("czsl_acc", "gzsl_unseen", "gzsl_seen", "gzsl_h", "stage2_fidelity"):
        assert produced[key] == reference[key], key
    a = SCEGGModel.from_pretrained(tmp_path / "example").state_dict()
    b = SCEGGModel.from_pretrained(tmp_path / "train").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
