"""The `scegg` command: predict from a saved model, the results table, train's flags."""
import json

import numpy as np
import pytest

from modeling_scegg.cli import format_results, main, scegg_verbose


def test_predict_prints_class_names(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "model")
    features = np.random.default_rng(0).random((3, 5, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", features)
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "x.npy"), "--top_k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["file"] for line in lines] == [f"{tmp_path / 'x.npy'}[{i}]" for i in range(3)]
    assert all(len(line["predictions"]) == 2 and line["predictions"][0]["label"].startswith("bird_") for line in lines)
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "x.npy"), "--czsl", "--top_k", "5"]) == 0
    czsl = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert {p["label"] for line in czsl for p in line["predictions"]} <= {"bird_1", "bird_4"}


def test_predict_refuses_pickled_npy(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "bad.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "bad.npy")]) == 1
    assert "a pickle), which are never loaded" in json.loads(capsys.readouterr().out)["error"]


def test_train_help_lists_every_training_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--stage1_iters", "--stage2_iters", "--stage3_epochs", "--classifier_epochs", "--syn_num",
                 "--batch_size", "--seed", "--mixed_precision", "--resume", "--push_to_hub", "--hub_model_id"):
        assert flag in text, flag


def test_results_table_labels_test_selected_numbers():
    results = {"dataset": "CUB", "protocol": "fixed schedule", "czsl_acc": 70.0, "gzsl_unseen": 60.0,
               "gzsl_seen": 70.0, "gzsl_h": 64.6, "chance_czsl": 2.0, "stage_seconds": {"stage1": 1.0},
               "published_protocol": {"label": "test-selected", "czsl_acc": 72.0, "gzsl_unseen": 61.0,
                                      "gzsl_seen": 71.0, "gzsl_h": 65.6}}
    table = format_results(results)
    assert "CZSL Acc     70.00" in table and "test-selected: Acc 72.00" in table
    assert "seen-only" not in table and "preset" not in table


def test_results_table_names_the_collapsed_side_and_the_chosen_preset():
    results = {"dataset": "AWA2", "protocol": "validation split", "czsl_acc": 60.0, "gzsl_unseen": 57.0,
               "gzsl_seen": 0.5, "gzsl_h": 1.0, "chance_czsl": 10.0, "stage_seconds": {"stage1": 1.0},
               "gzsl_seen_only": 22.8, "gzsl_unseen_only": 61.0, "gzsl_seen_as_unseen": 99.0,
               "gzsl_unseen_as_seen": 0.1,
               "preset_choice": {"chosen": "awa2-published", "candidates": {"awa2-published": {"gzsl_h": 38.5},
                                                                            "awa2-paper": {"gzsl_h": 19.7}}}}
    table = format_results(results)
    assert "seen-only 22.80 on test_seen, unseen-only 61.00 on test_unseen" in table
    assert "seen images called unseen 99.00%" in table
    assert "preset awa2-published, chosen on validation H among awa2-published 38.50, awa2-paper 19.70" in table


def test_convert_writes_the_hub_layout(tmp_path, capsys):
    assert main(["convert", "synthetic", "--cache_dir", str(tmp_path / "cache"),
                 "--hub_layout", str(tmp_path / "layout")]) == 0
    assert "synthetic: train" in capsys.readouterr().out
    from modeling_scegg.data import load_zsl_dataset

    again = load_zsl_dataset(str(tmp_path / "layout"), cache_dir=tmp_path / "cache2")
    original = load_zsl_dataset("synthetic", cache_dir=tmp_path / "cache")
    assert {k: len(v) for k, v in again.splits.items()} == {k: len(v) for k, v in original.splits.items()}
    np.testing.assert_allclose(again.semantics.attributes, original.semantics.attributes, atol=1e-6)  # re-normalised on load


# -- the command line's manners -------------------------------------------------------------------------------
def test_a_mistyped_local_folder_is_said_to_be_missing_in_two_lines(tmp_path, capsys):
    """Offline, ./outz is a folder that does not exist, not a Hub id to download."""
    assert main(["predict", "./outz", str(tmp_path / "x.npy")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: no such model folder: ./outz", "remedy: check the path (a Hub repo is given as ORG/NAME)"]
    assert main(["predict", "outz", str(tmp_path / "x.npy")]) == 2
    assert "no such model folder: outz" in capsys.readouterr().err


def test_verbose_adds_the_traceback(capsys):
    assert main(["predict", "./outz", "x.npy", "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith("(a Hub repo is given as ORG/NAME)")


@pytest.mark.parametrize("argv, verbose, passed", [
    (["--verbose", "train", "--seed", "1"], True, ["train", "--seed", "1"]),
    (["train", "--seed", "1", "--verbose"], True, ["train", "--seed", "1"]),
    (["predict", "m", "x.npy", "--verbose"], True, ["predict", "m", "x.npy", "--verbose"]),
    (["predict", "m", "--", "--verbose"], False, ["predict", "m", "--", "--verbose"]),
    (["train", "--", "--verbose"], False, ["train", "--", "--verbose"]),
])
def test_only_sceggs_own_verbose_is_taken(argv, verbose, passed):
    """train's parser does not know --verbose, so it is taken out there; other parsers take it
    themselves, and after `--` it is an argument (a file of that name), not the flag."""
    assert scegg_verbose(argv) == (verbose, passed)


def test_a_file_named_verbose_is_an_input_not_the_flag(capsys):
    assert main(["predict", "./outz", "--", "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no such model folder: ./outz" in err


def test_flags_take_dashes_and_underscores(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((1, 5, 12)).astype(np.float32))
    outputs = []
    for flag in ("--top_k", "--top-k"):
        assert main(["predict", str(tmp_path / "model"), str(tmp_path / "x.npy"), flag, "2", "--batch-size", "1"]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["predictions"])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(tmp_path / "model"), str(tmp_path / "x.npy"), "--top-k", "0"])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["predict"], ["attach-backbone"], ["add-classes"], ["evaluate"], ["plot"],
                                     ["convert"], ["push"], ["push-dataset"]])
def test_every_help_shows_defaults_and_the_presets(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for preset in ("cub-published", "sun-paper", "awa2-tfvaegan"):
        assert preset in text, (command, preset)
    if command == ["predict"]:
        assert "classes per input (default: 5)" in text and "(default: 16)" in text and "--top-k" in text


def test_train_help_shows_defaults_and_the_presets(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0)" in text and "cub-published" in text and "--output-dir" in text


def test_train_reads_a_json_arguments_file(tmp_path, monkeypatch):
    """`scegg train args.json`, as transformers' example scripts read one: the same run as the flags."""
    from modeling_scegg import training
    from modeling_scegg.cli import training_argv

    values = {"dataset": "synthetic", "seed": 3, "output_dir": str(tmp_path / "out"), "plots": False,
              "synthetic_overrides": ["num_classes=10", "num_unseen=3"], "hub_model_id": None}
    (tmp_path / "args.json").write_text(json.dumps(values))
    from_file = training.parse_training_args(training_argv([str(tmp_path / "args.json")]))
    from_flags = training.parse_training_args(["--dataset", "synthetic", "--seed", "3", "--output_dir",
                                               str(tmp_path / "out"), "--plots", "false", "--synthetic_overrides",
                                               "num_classes=10", "num_unseen=3"])
    assert from_file == from_flags and from_file.seed == 3 and from_file.plots is False
    seen = []
    monkeypatch.setattr(training, "run_pipeline", lambda args: seen.append(args) or RESULTS_FOR_TABLE)
    assert main(["train", str(tmp_path / "args.json")]) == 0
    assert seen == [from_flags]
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["train", str(tmp_path / "bad.json")]) == 2


RESULTS_FOR_TABLE = {"dataset": "synthetic", "protocol": "fixed schedule", "czsl_acc": 70.0, "gzsl_unseen": 60.0,
                     "gzsl_seen": 70.0, "gzsl_h": 64.6, "chance_czsl": 2.0, "stage_seconds": {"stage1": 1.0}}


def test_train_refuses_a_bad_image_option_in_two_lines(tmp_path, capsys):
    argv = ["train", "--dataset", str(tmp_path), "--class_attributes_file", str(tmp_path / "c.csv"),
            "--image_options", "crop=224"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("error: --image_options: 'crop=224' is not key=value") and lines[1].startswith(
        "remedy: image options are crop_size: ")
