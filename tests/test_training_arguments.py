"""Command-line parsing: presets, explicit flags winning over them, model overrides, errors."""
import json

import pytest
from conftest import REPO_ROOT

from modeling_scegg.training.arguments import BUILTIN_PRESETS, DEFAULT_PRESETS, parse_training_args, read_preset, shipped_presets


def test_defaults_follow_the_published_code():
    args = parse_training_args(["--dataset", "my_data"])
    assert (args.stage1_iters, args.stage2_iters, args.batch_size, args.classifier_epochs) == (2000, 4000, 64, 25)
    assert (args.stage1_optimizer, args.stage2_optimizer, args.stage3_pass_order) == ("rmsprop", "rmsprop", "epoch")
    assert args.decoder_lr == 1e-4 and args.published_protocol == "off" and args.calibration == "auto"
    assert args.model_config_overrides() == {}


@pytest.mark.parametrize("dataset, preset", [("CUB", "cub"), ("sun", "sun"), ("AWA2", "awa2")])
def test_a_standard_dataset_picks_its_own_preset(dataset, preset, caplog):
    """`--dataset SUN` without --config used to train with CUB's numbers; now it gets SUN's
    default preset, and the log says which."""
    with caplog.at_level("INFO", logger="modeling_scegg.training.arguments"):
        args = parse_training_args(["--dataset", dataset])
    expected = read_preset(DEFAULT_PRESETS[dataset.upper()])
    assert DEFAULT_PRESETS[dataset.upper()].startswith(preset) and args.config == DEFAULT_PRESETS[dataset.upper()]
    assert args.stage3_lr == expected["training"]["stage3_lr"] and args.syn_num == expected["training"]["syn_num"]
    assert args.model_config_overrides() == expected["model"]
    assert DEFAULT_PRESETS[dataset.upper()] in caplog.text


def test_an_explicit_preset_wins_over_the_dataset_default():
    args = parse_training_args(["--dataset", "SUN", "--config", "sun-paper"])
    assert args.config == "sun-paper" and args.stage2_optimizer == "adam"


def test_a_dataset_without_preset_says_so(caplog):
    with caplog.at_level("WARNING", logger="modeling_scegg.training.arguments"):
        parse_training_args(["--dataset", "APY"])
    assert "APY has no preset" in caplog.text


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
@pytest.mark.parametrize("variant", ["published", "paper"])
def test_shipped_presets_parse_and_build_configs(name, variant):
    from modeling_scegg import SCEGGConfig

    path = REPO_ROOT / "hub_configs" / f"{name}-{variant}.json"
    args = parse_training_args(["--config", str(path), "--dataset", name.upper()])
    config = SCEGGConfig(**args.model_config_overrides())
    preset = read_preset(path)
    assert set(preset["sources"]) == set(preset["model"]) | set(preset["training"]), "every value names its source"
    assert all(preset["sources"].values()) and preset["description"]
    assert args.decoder_lr == (1e-3 if (name, variant) == ("sun", "published") else 1e-4)  # SUN: chosen on validation
    assert args.stage3_pass_order == "epoch"
    if variant == "paper":
        assert (config.stage1_classes, config.runtime_compression, config.classifier_input) == ("all", "mlp", "plain")
        assert (args.stage1_optimizer, args.stage2_optimizer, args.stage3_lr) == ("adam", "adam", 1e-4)
    else:
        assert (config.lambda_s, config.lambda_u, config.feedback_weight, config.synthesis_feedback_weight) == (1.0, 0.001, 0, 0)
        assert args.feedback_lr == {"cub": 1e-5, "sun": 1e-4, "awa2": 1e-4}[name]
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


def test_shipped_presets_are_found_by_name():
    assert {f"{d}-{v}" for d in ("cub", "sun", "awa2") for v in ("published", "paper", "tfvaegan")} <= set(shipped_presets())
    assert read_preset("awa2-tfvaegan")["model"]["dense_feature_source"] == "pooled"
    with pytest.raises(FileNotFoundError, match="shipped"):
        read_preset("cub-oficial")


def test_mixed_precision_defaults_to_what_accelerate_was_configured_with(monkeypatch):
    """`accelerate launch --mixed_precision fp16` (or `accelerate config`) exports the setting;
    an explicit flag still wins, and without either the device decides."""
    from modeling_scegg.training.precision import native_bf16

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert parse_training_args([]).mixed_precision == "fp16"
    assert parse_training_args(["--mixed_precision", "no"]).mixed_precision == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    expected = "bf16" if native_bf16("cpu") else "no"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert parse_training_args([]).mixed_precision == expected
    assert parse_training_args(["--mixed_precision", "auto"]).mixed_precision == expected


def test_native_bf16_is_false_where_bf16_would_be_emulated(monkeypatch):
    import torch

    from modeling_scegg.training.precision import native_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not native_bf16("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_bf16("cpu")


def test_help_names_the_command_every_flag_and_the_dataset_defaults(capsys):
    from dataclasses import fields

    from modeling_scegg.training.arguments import SCEGGTrainingArguments

    assert all(f.metadata.get("help") for f in fields(SCEGGTrainingArguments)), "every flag has help text"
    with pytest.raises(SystemExit):
        parse_training_args(["--dataset", "SUN", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: scegg train")
    assert "{epoch,batch}" in text and "{auto,validation,none}" in text
    sun = read_preset(DEFAULT_PRESETS["SUN"])["training"]
    assert f"(default: {sun['syn_num']})" in text and f"(default: {sun['stage3_lr']})" in text


def test_image_options_reach_the_run_checked(tmp_path):
    from modeling_scegg.errors import UserError

    image_folder = ["--dataset", str(tmp_path), "--class_attributes_file", str(tmp_path / "classes.csv")]
    args = parse_training_args([*image_folder, "--image_options", "crop_size=224", "resize_size=256"])
    assert args.image_options == ["crop_size=224", "resize_size=256"]
    with pytest.raises(UserError, match="crop_size takes a whole number"):
        parse_training_args([*image_folder, "--image_options", "crop_size=big"])
    with pytest.raises(ValueError, match="--image_options applies to an image-folder --dataset"):
        parse_training_args(["--image_options", "crop_size=224"])
