"""An after-stage snapshot gives back the model, the feature cache and the progress record it
was written from: what `--resume` continues from."""
import torch
from conftest import tiny_config_kwargs

from modeling_scegg import SCEGGConfig, SCEGGModel
from modeling_scegg.training.snapshots import read_snapshot, snapshot_writer
from modeling_scegg.training.state import EpochScores, FeatureCache, Progress, SplitFeatures


def test_a_snapshot_reads_back_what_was_written(tmp_path):
    torch.manual_seed(0)
    model = SCEGGModel(SCEGGConfig(**tiny_config_kwargs()))
    model.set_class_semantics(torch.rand(6, 7), torch.randn(7, 6))
    seen, unseen = (SplitFeatures(features=torch.rand(n, 12), labels=torch.zeros(n, dtype=torch.long)) for n in (5, 3))
    cache = FeatureCache(train=SplitFeatures(features=torch.rand(4, 12), labels=torch.tensor([0, 2, 3, 5]),
                                             local_scores=torch.randn(4, 6)), test_seen=seen, test_unseen=unseen)
    progress = Progress(timings={"stage1": 0.5}, scores=EpochScores(by_stage3_epoch={1: [{"gzsl_h": 2.0}]}),
                        history={"stage1/loss": [(1, 3.0)]})
    snapshot_writer(model, cache, progress)(tmp_path)
    loaded, loaded_cache, loaded_progress = read_snapshot(tmp_path, torch.device("cpu"))
    assert loaded_progress == progress
    assert torch.equal(loaded_cache.train.local_scores, cache.train.local_scores)
    assert torch.equal(loaded_cache.test_unseen.features, unseen.features)
    state = model.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in loaded.state_dict().items())
