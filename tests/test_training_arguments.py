"""Command-line parsing: presets, explicit flags winning over them, model overrides, errors."""
import json

import pytest

from conftest import REPO_ROOT
from modeling_scegg.training.arguments import BUILTIN_PRESETS, parse_training_args, read_preset


def test_defaults_follow_the_published_code():
    args = parse_training_args(["--dataset", "CUB"])
    assert (args.stage1_iters, args.stage2_iters, args.batch_size, args.classifier_epochs) == (2000, 4000, 64, 25)
    assert args.stage1_optimizer == "rmsprop" and not args.published_protocol
    assert args.model_config_overrides() == {}


def test_synthetic_uses_its_builtin_preset():
    args = parse_training_args([])
    assert args.dataset == "synthetic"
    assert args.stage3_epochs == BUILTIN_PRESETS["synthetic"]["training"]["stage3_epochs"]
    assert args.model_config_overrides()["generator_hidden_dim"] == 512


def test_explicit_flags_win_over_the_preset(tmp_path):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"model": {"lambda_s": 0.5}, "training": {"stage1_iters": 7, "syn_num": 9}}))
    args = parse_training_args(["--config", str(preset), "--stage1_iters", "11",
                                "--model_overrides", "lambda_s=0.25", "lambda_l=0"])
    assert (args.stage1_iters, args.syn_num) == (11, 9)
    assert args.model_config_overrides() == {"lambda_s": 0.25, "lambda_l": 0}


@pytest.mark.parametrize("name", ["cub", "sun", "awa2"])
@pytest.mark.parametrize("variant", ["official", "paper"])
def test_shipped_presets_parse_and_build_configs(name, variant):
    from modeling_scegg import SCEGGConfig

    path = REPO_ROOT / "hub_configs" / f"{name}-{variant}.json"
    args = parse_training_args(["--config", str(path), "--dataset", name.upper()])
    config = SCEGGConfig(**args.model_config_overrides())
    if variant == "paper":
        assert (config.stage1_classes, config.runtime_compression, config.classifier_input) == ("all", "mlp", "plain")
        assert args.stage1_optimizer == "adam"
    else:
        assert (config.stage1_classes, config.runtime_compression, config.classifier_input) == ("seen", "mean", "augmented")


def test_bad_presets_and_flags_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_preset(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"training": {"stage1_itres": 3}}))
    with pytest.raises(ValueError, match="stage1_itres"):
        read_preset(bad)
    with pytest.raises(ValueError, match="--model_overrides expects key=value"):
        parse_training_args(["--model_overrides", "lambda_s"]).model_config_overrides()
    with pytest.raises(ValueError, match="mixed_precision"):
        parse_training_args(["--mixed_precision", "fp8"])
    with pytest.raises(ValueError, match="hub_model_id"):
        parse_training_args(["--push_to_hub", "true"])
