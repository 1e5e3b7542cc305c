"""Validation-split selection: the view of the data it trains on, and a run that uses it."""
import json
from pathlib import Path

import numpy as np
import pytest
from datasets import DatasetDict
from test_training_pipeline import tiny_argv

from modeling_scegg import SCEGGModel
from modeling_scegg.data import SyntheticConfig, load_zsl_dataset
from modeling_scegg.evaluation import evaluate_model
from modeling_scegg.training import parse_training_args, run_pipeline
from modeling_scegg.training.loading import load_data
from modeling_scegg.training.selection import validation_view, view_arguments


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    config = SyntheticConfig(num_classes=12, num_unseen=3, num_val=3, num_attributes=8, num_regions=4,
                             feature_dim=16, word_dim=12, train_images_per_class=10)
    return load_zsl_dataset("synthetic", cache_dir=tmp_path_factory.mktemp("cache"), synthetic_config=config)


def _labels(split):
    return np.asarray(split["label"])


def test_view_holds_out_val_classes_and_a_share_of_seen_images(data):
    view = validation_view(data, seed=0)
    train, held, val = (_labels(view.splits[s]) for s in ("train", "test_seen", "test_unseen"))
    assert set(view.semantics.unseen_class_ids) == set(data.semantics.val_class_ids) == set(val)
    assert not set(train) & set(val)
    assert set(held) <= set(train) == set(view.semantics.seen_class_ids)
    assert not set(train) & set(data.semantics.unseen_class_ids)
    assert len(train) + len(held) == len(data.splits["train_sub"])
    assert len(held) == pytest.approx(0.2 * len(data.splits["train_sub"]), abs=len(set(train)))


def test_a_view_needs_validation_classes(tmp_path):
    config = SyntheticConfig(num_classes=6, num_unseen=2, num_val=0, num_attributes=5, num_regions=3, feature_dim=8,
                             word_dim=4, train_images_per_class=3)
    data = load_zsl_dataset("synthetic", cache_dir=tmp_path, synthetic_config=config)
    with pytest.raises(ValueError, match=r"--calibration or --preset_choice validation\) needs train_sub / val splits"):
        validation_view(data, seed=0)


def test_view_arguments_shorten_the_view_schedule_only():
    args = parse_training_args(["--stage1_iters", "1000", "--stage2_iters", "7", "--stage3_epochs", "10",
                                "--classifier_epochs", "25", "--view_schedule", "0.25", "--published_protocol", "full",
                                "--plots", "true", "--output_dir", "out"])
    view = view_arguments(args, "out/validation")
    assert (view.stage1_iters, view.stage2_iters, view.stage3_epochs) == (250, 2, 3)  # rounded up
    assert view.output_dir == "out/validation" and args.output_dir == "out"
    assert (view.published_protocol, view.plots, view.push_to_hub) == ("off", False, False)
    # what decides the balance of the view's classifiers, and every learning rate, stays the run's
    unchanged = ("classifier_epochs", "syn_num", "stage3_lr", "stage1_lr", "batch_size", "seed", "calibration")
    assert all(getattr(view, name) == getattr(args, name) for name in unchanged)


def test_view_arguments_keep_the_full_schedule_by_default_and_what_the_view_selects():
    args = parse_training_args(["--stage1_iters", "9", "--stage3_epochs", "6"])
    view = view_arguments(args, "v")
    assert (view.stage1_iters, view.stage2_iters, view.stage3_epochs) == (9, args.stage2_iters, 6)
    # a stage-3 epoch count chosen on the view must be on the real run's scale
    selecting = parse_training_args(["--stage1_iters", "8", "--stage3_epochs", "6", "--selection", "validation",
                                     "--stage3_eval_every", "2", "--view_schedule", "0.5"])
    view = view_arguments(selecting, "v")
    assert (view.stage1_iters, view.stage3_epochs, view.classifier_epochs) == (4, 6, selecting.classifier_epochs)
    # stage 1 whole, stages 2-3 shortened
    whole = parse_training_args(["--stage1_iters", "8", "--stage2_iters", "8", "--stage3_epochs", "6",
                                 "--view_schedule", "0.5", "--view_shortens", "after_stage1"])
    view = view_arguments(whole, "v")
    assert (view.stage1_iters, view.stage2_iters, view.stage3_epochs) == (8, 4, 3)


@pytest.mark.parametrize("share", ["0", "1.5", "-0.25"])
def test_view_schedule_is_a_share(share):
    with pytest.raises(ValueError, match="--view_schedule"):
        parse_training_args(["--view_schedule", share])


def test_stage3_selection_needs_the_validation_protocol():
    with pytest.raises(ValueError, match="--selection validation"):
        parse_training_args(["--stage3_eval_every", "5"])


def test_view_needs_a_validation_split(data):
    without = type(data)(name="x", splits=DatasetDict({k: data.splits[k] for k in ("train", "test_seen", "test_unseen")}),
                         semantics=data.semantics)
    with pytest.raises(ValueError, match="train_sub / val"):
        validation_view(without, seed=0)


def test_selection_run_uses_epochs_chosen_on_validation(tmp_path):
    argv = tiny_argv(tmp_path / "out", tmp_path / "cache", "--selection", "validation", "--classifier_epochs", "4",
                     "--stage3_epochs", "2", "--stage3_eval_every", "1", "--plots", "false",
                     "--calibration", "validation")
    args = parse_training_args(argv)
    results = run_pipeline(args)
    selection = results["selection"]
    assert selection["stage3_epochs_scored"] == [1, 2] and selection["stage3_epochs"] in (1, 2)
    assert results["training_args"]["stage3_epochs"] == selection["stage3_epochs"]
    assert 1 <= selection["gzsl_epochs"] <= 4 and 1 <= selection["czsl_epochs"] <= 4
    assert results["classifier_epochs"] == {"gzsl": selection["gzsl_epochs"], "czsl": selection["czsl_epochs"]}
    assert results["protocol"].startswith("validation split: classifier epochs and the stage-3 epoch count")
    view_results = json.loads((tmp_path / "out" / "validation" / "results.json").read_text())
    assert view_results["dataset"] == "synthetic (validation view)"
    # the view's model is nobody's to use: it leaves its record, not a model folder
    assert not any((tmp_path / "out" / "validation" / name).exists() for name in ("model.safetensors", "README.md",
                                                                                   "config.json"))
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert selection["validation_unseen_classes"] != []
    card = (tmp_path / "out" / "README.md").read_text()
    assert "validation" in card.lower()
    # calibrated stacking: the offset is the one that was best on the view for the chosen epoch,
    # the saved model applies it, and the raw numbers stay beside the calibrated ones
    offset = selection["calibration"]["seen_score_offset"]
    assert offset == selection["validation_scores"]["seen_score_offset"] == results["calibration"]["seen_score_offset"]
    assert "calibrated-stacking" in results["protocol"] and "never on test" in results["calibration"]["method"]
    assert set(results["uncalibrated"]) == {"gzsl_unseen", "gzsl_seen", "gzsl_h", "gzsl_unseen_as_seen",
                                            "gzsl_seen_as_unseen"}
    model = SCEGGModel.from_pretrained(tmp_path / "out")
    assert model.config.seen_score_offset == offset
    recomputed = evaluate_model(model, load_data(args), batch_size=16)
    for key in ("czsl_acc", "gzsl_unseen", "gzsl_seen", "gzsl_h"):
        assert recomputed[key] == pytest.approx(results[key], abs=1e-6), key


def test_calibration_auto_calibrates_where_a_validation_view_exists(data):
    from accelerate import PartialState

    from modeling_scegg.training.pipeline import resolve_calibration

    PartialState()  # the pipeline's logger is Accelerate's
    without = type(data)(name="x", splits=DatasetDict({k: data.splits[k] for k in ("train", "test_seen", "test_unseen")}),
                         semantics=data.semantics)
    assert parse_training_args([]).calibration == "auto"
    assert resolve_calibration("auto", data) == "validation" and resolve_calibration("auto", without) == "none"
    assert resolve_calibration("none", data) == "none"


def test_preset_choice_is_on_by_default_only_where_the_user_named_no_preset(data):
    from accelerate import PartialState

    from modeling_scegg.training.preset_choice import resolve_preset_choice

    PartialState()
    assert parse_training_args(["--dataset", "AWA2"]).preset_choice == "auto"
    assert parse_training_args(["--dataset", "AWA2", "--config", "awa2-paper"]).preset_choice == "off"
    without = type(data)(name="x", splits=DatasetDict({k: data.splits[k] for k in ("train", "test_seen", "test_unseen")}),
                         semantics=data.semantics)
    two = parse_training_args(["--preset_candidates", "awa2-paper", "awa2-published"])
    assert resolve_preset_choice(parse_training_args([]), data) == "off"  # the synthetic data has no candidates
    assert resolve_preset_choice(two, data) == "validation" and resolve_preset_choice(two, without) == "off"


def test_a_candidate_keeps_the_users_flags_and_takes_the_rest_from_its_preset():
    from modeling_scegg.training.preset_choice import candidate_args

    args = parse_training_args(["--dataset", "AWA2", "--stage1_iters", "300"])
    assert (args.config, args.stage1_optimizer, args.stage3_lr) == ("awa2-published", "rmsprop", 1e-5)
    candidate = candidate_args(args, "awa2-paper")
    assert (candidate.config, candidate.stage1_iters, candidate.stage1_optimizer) == ("awa2-paper", 300, "adam")
    assert candidate.stage3_lr == 1e-4 and candidate.model_config_overrides()["lambda_s"] == 0.1


def test_preset_choice_trains_the_preset_with_the_best_validation_h(tmp_path):
    presets = {"plain": {"model": {"classifier_input": "plain", "lambda_s": 0.0, "lambda_u": 0.0}},
               "augmented": {"model": {"classifier_input": "augmented"}, "training": {"stage1_optimizer": "adam"}}}
    for name, preset in presets.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(preset))
    candidates = [str(tmp_path / f"{name}.json") for name in presets]
    argv = tiny_argv(tmp_path / "out", tmp_path / "cache", "--plots", "false", "--calibration", "validation",
                     "--preset_choice", "validation", "--preset_candidates", *candidates, "--view_schedule", "0.5")
    results = run_pipeline(parse_training_args(argv))
    choice = results["preset_choice"]
    scores = {name: choice["candidates"][name]["gzsl_h"] for name in candidates}
    assert choice["chosen"] == max(scores, key=scores.get) and results["training_args"]["config"] == choice["chosen"]
    assert results["training_args"]["preset_choice"] == "validation"
    for name in presets:  # one view run per candidate, the test splits never read by them
        view = json.loads((tmp_path / "out" / "validation" / name / "results.json").read_text())
        assert view["dataset"] == "synthetic (validation view)"
        # the view trains half the run's schedule (tiny_argv: 24 / 12 iterations, 3 stage-3 epochs)
        assert [view["training_args"][k] for k in ("stage1_iters", "stage2_iters", "stage3_epochs")] == [12, 6, 2]
    assert results["training_args"]["stage1_iters"] == 24 and choice["view_schedule"] == 0.5
    assert "50% of the run's stage 1-3 schedule" in results["protocol"]
    chosen = Path(choice["chosen"]).stem
    model = SCEGGModel.from_pretrained(tmp_path / "out")
    assert model.config.classifier_input == chosen
    # the winner's view run is the one the calibration offset comes from
    assert results["calibration"]["seen_score_offset"] == choice["candidates"][choice["chosen"]]["seen_score_offset"]
    assert "the preset" in results["protocol"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert '"preset_choice"' in card and f"{chosen}.json" in card
