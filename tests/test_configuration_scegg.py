"""SCEGGConfig: CUB defaults, validation that names the field, JSON round trip."""
import pytest
from conftest import tiny_config_kwargs

from modeling_scegg import SCEGGConfig


def test_default_config_describes_cub():
    config = SCEGGConfig()
    assert (config.feature_dim, config.num_regions, config.num_attributes) == (2048, 196, 312)
    assert config.num_classes == 200 and len(config.id2label) == 200
    assert (config.num_seen_classes, config.num_unseen_classes) == (150, 50)
    assert not set(config.seen_class_ids) & set(config.unseen_class_ids)
    assert config.resolved_sc_hidden_dim == 156 and config.resolved_latent_dim == 312


def test_published_defaults_and_paper_switches():
    config = SCEGGConfig()
    published = dict(stage1_classes="seen", runtime_compression="mean", regression_loss="mse",
                     sce_source="reconstruction", decoder_loss="weighted_l1", adaptive_gp=True,
                     classifier_input="augmented", train_word_vectors=True)
    assert {k: getattr(config, k) for k in published} == published
    paper = SCEGGConfig(stage1_classes="all", runtime_compression="mlp", regression_loss="sum_l2",
                        sce_source="prior", decoder_loss="l1", adaptive_gp=False,
                        classifier_input="plain", train_word_vectors=False)
    assert paper.classifier_input_dim == paper.feature_dim
    assert config.classifier_input_dim == 2048 + 312 + 4096


def test_json_round_trip(tmp_path):
    config = SCEGGConfig(**tiny_config_kwargs(lambda_s=0.5, gp_adapt_bounds=(1.0, 1.2)))
    config.save_pretrained(tmp_path)
    loaded = SCEGGConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.id2label[4] == "bird_4" and loaded.unseen_class_ids == [1, 4]


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(seen_class_ids=[0, 1, 2, 3, 5], unseen_class_ids=[1, 4]), "unseen_class_ids"),
        (dict(unseen_class_ids=[1, 6]), "unseen_class_ids"),
        (dict(seen_class_ids=[]), "seen_class_ids"),
        (dict(seen_class_ids=[0, 0, 2]), "seen_class_ids"),
        (dict(feature_dim=0), "feature_dim"),
        (dict(runtime_compression="max"), "runtime_compression"),
        (dict(stage1_classes="unseen"), "stage1_classes"),
        (dict(id2label={0: "a"}), "id2label"),
        (dict(gp_adapt_bounds=(2.0, 1.0)), "gp_adapt_bounds"),
        (dict(attribute_names=["wing", "bill"]), "attribute_names"),
    ],
)
def test_invalid_settings_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        SCEGGConfig(**tiny_config_kwargs(**overrides))


def test_seen_without_unseen_is_rejected():
    with pytest.raises(ValueError, match="unseen_class_ids"):
        SCEGGConfig(num_classes=4, seen_class_ids=[0, 1])


def test_absurd_sizes_in_a_model_folder_are_refused_when_loaded(tmp_path):
    """config.json asking for 10^9 classes without names would build 10^9 ids and names before
    anything else failed: it is refused at once, naming the field."""
    import json

    from modeling_scegg.configuration_scegg import MAX_NUM_CLASSES, MAX_WIDTH

    SCEGGConfig(**tiny_config_kwargs()).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for field, value, bound in (("num_classes", 10**9, MAX_NUM_CLASSES), ("encoder_hidden_dim", 10**7, MAX_WIDTH)):
        config = {k: v for k, v in saved.items() if k not in ("id2label", "label2id", "seen_class_ids", "unseen_class_ids")}
        (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(ValueError, match=f"SCEGGConfig.{field} = {value} is above {bound}"):
            SCEGGConfig.from_pretrained(tmp_path)
