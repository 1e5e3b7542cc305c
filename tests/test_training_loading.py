"""A run's inputs: every size of the model is read from the data, and a flag that cannot apply
says so instead of being ignored."""
import pytest

from modeling_scegg.training import parse_training_args
from modeling_scegg.training.loading import build_config, load_data

TINY = ["num_classes=6", "num_unseen=2", "num_val=0", "num_attributes=5", "num_regions=3", "feature_dim=8",
        "word_dim=4", "train_images_per_class=3", "test_seen_images_per_class=1", "test_unseen_images_per_class=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_data(parse_training_args(["--cache_dir", str(cache), "--synthetic_overrides", *TINY]))


def test_sizes_and_classes_come_from_the_data(data):
    config = build_config(data, {"stage1_classes": "all"})
    assert (config.feature_dim, config.num_regions, config.num_attributes, config.num_classes) == (8, 3, 5, 6)
    assert sorted(config.seen_class_ids + config.unseen_class_ids) == list(range(6))
    assert len(config.unseen_class_ids) == 2 and config.word_dim == 4
    assert config.stage1_classes == "all"  # what the data does not fix, the overrides set


def test_overrides_may_not_contradict_the_data(data):
    with pytest.raises(ValueError, match=r"\['feature_dim'\] contradict the sizes read from dataset"):
        build_config(data, {"feature_dim": 9})


def test_synthetic_overrides_refuse_other_datasets(tmp_path):
    args = parse_training_args(["--dataset", "CUB", "--data_dir", str(tmp_path), "--synthetic_overrides", "num_classes=4"])
    with pytest.raises(ValueError, match="--synthetic_overrides only applies to --dataset synthetic"):
        load_data(args)
