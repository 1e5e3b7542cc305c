"""What results.json says: the published, test-selected numbers are kept apart and labelled."""
from modeling_scegg.training import parse_training_args
from modeling_scegg.training.outputs import published_protocol_results
from modeling_scegg.training.state import EpochScores


def test_published_protocol_classifier_level():
    scores = [{"czsl_acc": a, "gzsl_unseen": u, "gzsl_seen": 50.0, "gzsl_h": h} for a, u, h in
              ((10.0, 5.0, 9.0), (30.0, 6.0, 11.0), (20.0, 7.0, 10.0))]
    args = parse_training_args(["--published_protocol", "classifier"])
    result = published_protocol_results(args, EpochScores(by_classifier_epoch=scores))
    assert (result["czsl_acc"], result["czsl_epoch"], result["gzsl_h"], result["gzsl_epoch"]) == (30.0, 2, 11.0, 2)
    assert "after the last stage-3 epoch" in result["label"]
