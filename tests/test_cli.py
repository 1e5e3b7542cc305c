"""The `scegg` command: predict from a saved model, the results table, train's flags."""
import json

import numpy as np
import pytest

from modeling_scegg.cli import format_results, main


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


def test_predict_refuses_pickled_npy(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "bad.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        main(["predict", str(tmp_path / "model"), str(tmp_path / "bad.npy")])


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
