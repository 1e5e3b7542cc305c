"""The run's state types write and read the snapshot format and the results.json keys that
users read, and a run's plan is where the validation view's run differs from the real one."""
import json

import torch

from modeling_scegg.training import parse_training_args
from modeling_scegg.training.state import (
    EpochScores,
    FeatureCache,
    OffsetChoice,
    Progress,
    RunPlan,
    SplitFeatures,
    ValidationChoice,
)


def _cache() -> FeatureCache:
    train = SplitFeatures(features=torch.rand(6, 4), labels=torch.arange(6), local_scores=torch.randn(6, 3))
    return FeatureCache(train=train, test_seen=SplitFeatures(features=torch.rand(2, 4), labels=torch.tensor([0, 1])),
                        test_unseen=SplitFeatures(features=torch.rand(3, 4), labels=torch.tensor([2, 2, 3])))


def test_feature_cache_round_trips_through_the_flat_snapshot_names():
    cache = _cache()
    flat = cache.to_tensors()
    assert sorted(flat) == ["test_seen/features", "test_seen/labels", "test_unseen/features", "test_unseen/labels",
                            "train/features", "train/labels", "train/local_scores"]
    back = FeatureCache.from_tensors(flat)
    assert back.test_seen.local_scores is None
    for split, features in cache.splits().items():
        for name, value in features.tensors().items():
            assert torch.equal(getattr(back.splits()[split], name), value), (split, name)


def test_progress_round_trips_through_json_with_its_snapshot_keys():
    progress = Progress(timings={"stage1": 1.5}, stage2_fidelity={"mse": 0.1},
                        scores=EpochScores(by_classifier_epoch=[{"gzsl_h": 1.0}], by_stage3_epoch={2: [{"gzsl_h": 3.0}]}),
                        results={"czsl_acc": 20.0}, history={"stage1/loss": [(1, 0.5)]})
    saved = json.loads(json.dumps(progress.to_json()))
    assert set(saved) == {"timings", "stage2_fidelity", "results", "scores_by_epoch", "stage3_scores", "history"}
    assert saved["stage3_scores"] == {"2": [{"gzsl_h": 3.0}]}
    assert Progress.from_json(saved) == progress  # epochs back as ints, history points back as tuples


def test_validation_choice_writes_the_selection_keys_users_read():
    choice = ValidationChoice(stage3_epochs=3, validation_scores={"gzsl_h": 40.0}, validation_unseen_classes=[7, 9],
                              stage3_epochs_scored=[], classifier_epochs=(4, 2),
                              calibration=OffsetChoice(seen_score_offset=-0.5,
                                                       validation_gzsl_h={"calibrated": 40.0, "uncalibrated": 30.0}))
    written = choice.to_json()
    assert list(written) == ["stage3_epochs", "validation_scores", "validation_unseen_classes", "stage3_epochs_scored",
                             "gzsl_epochs", "czsl_epochs", "calibration"]
    assert (written["gzsl_epochs"], written["czsl_epochs"]) == (4, 2)
    assert written["calibration"]["seen_score_offset"] == choice.seen_score_offset == -0.5


def test_the_view_scores_every_epoch_and_the_real_run_trains_with_the_choice():
    args = parse_training_args(["--calibration", "validation", "--selection", "validation", "--stage3_eval_every", "2"])
    view = RunPlan.for_view(args)
    assert view.choose_offset and view.score_every_classifier_epoch and view.stage3_score_every == 2
    assert view.classifier_epochs is None and view.seen_score_offset == 0.0
    choice = ValidationChoice(stage3_epochs=2, validation_scores={}, validation_unseen_classes=[],
                              stage3_epochs_scored=[2], classifier_epochs=(3, 1),
                              calibration=OffsetChoice(seen_score_offset=1.25, validation_gzsl_h={}))
    real = RunPlan.for_real_run(args, choice)
    assert not (real.choose_offset or real.score_every_classifier_epoch or real.stage3_score_every)
    assert (real.classifier_epochs, real.seen_score_offset) == ((3, 1), 1.25)
    published = RunPlan.for_real_run(parse_training_args(["--published_protocol", "full"]), None)
    assert published.stage3_score_every == 1 and not published.choose_offset
