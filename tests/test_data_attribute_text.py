"""Attribute word vectors from attribute names: the text form, the sentence encoder, and the
rule that training data without word vectors is embedded or refused, never left at zero."""
from pathlib import Path

import numpy as np
import pytest
from test_data_xlsa17 import write_standard_layout

from modeling_scegg.data import SyntheticConfig, load_zsl_dataset, save_zsl_dataset_to_hub_layout
from modeling_scegg.data.attribute_text import attribute_name_to_text, embed_attribute_names
from modeling_scegg.training import parse_training_args
from modeling_scegg.training.loading import build_config, load_data

TINY = SyntheticConfig(num_classes=6, num_unseen=2, num_val=1, num_attributes=4, num_regions=3, feature_dim=5,
                       word_dim=7, train_images_per_class=3, test_seen_images_per_class=1, test_unseen_images_per_class=2)
CUB_LIKE = ["has_bill_shape::curved_(up_or_down)", "has_bill_shape::hooked", "has_wing_color::blue", "has_wing_color::grey"]


def _cosine(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit @ unit.T


def test_attribute_names_become_text():
    assert attribute_name_to_text("has_bill_shape::curved_(up_or_down)") == "has bill shape curved (up or down)"
    assert attribute_name_to_text("  black-and-white  ") == "black and white"


def test_related_attribute_names_are_closer_than_unrelated(sentence_encoder):
    vectors = embed_attribute_names(CUB_LIKE, sentence_encoder)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    similarity = _cosine(vectors)
    assert similarity[0, 1] > similarity[0, 2] and similarity[0, 1] > similarity[0, 3]  # bill shapes
    assert similarity[2, 3] > similarity[2, 0] and similarity[2, 3] > similarity[2, 1]  # wing colours


def test_mean_pooling_matches_sentence_transformers(sentence_encoder):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(sentence_encoder, device="cpu").encode(
        [attribute_name_to_text(n) for n in CUB_LIKE])
    ours = embed_attribute_names(CUB_LIKE, sentence_encoder)
    np.testing.assert_allclose(ours / np.linalg.norm(ours, axis=1, keepdims=True), reference, atol=1e-5)


def _hub_layout_without_word_vectors(tmp_path: Path) -> Path:
    data = load_zsl_dataset("synthetic", cache_dir=tmp_path / "cache", synthetic_config=TINY)
    data.semantics.word_vectors = None
    data.semantics.attribute_names = CUB_LIKE
    save_zsl_dataset_to_hub_layout(data, tmp_path / "layout")
    return tmp_path / "layout"


def test_missing_word_vectors_are_embedded_from_the_names_and_recorded(tmp_path, sentence_encoder):
    layout = _hub_layout_without_word_vectors(tmp_path)
    assert load_zsl_dataset(str(layout), cache_dir=tmp_path / "c1").semantics.word_vectors is None
    args = parse_training_args(["--dataset", str(layout), "--cache_dir", str(tmp_path / "c2"),
                                "--attribute_encoder", sentence_encoder])
    data = load_data(args)
    np.testing.assert_array_equal(data.semantics.word_vectors, embed_attribute_names(CUB_LIKE, sentence_encoder))
    config = build_config(data, {})
    assert config.word_dim == 384 and config.attribute_encoder == sentence_encoder
    assert config.attribute_names == CUB_LIKE, "predictions name the attributes they saw (return_attributes)"


def test_dataset_without_word_vectors_or_names_is_refused(tmp_path, sentence_encoder):
    """Before: the run trained with all-zero attribute queries (uniform attention that never learns)."""
    write_standard_layout(tmp_path / "data", "SUN")
    (tmp_path / "data" / "w2v" / "SUN_attribute.pkl").unlink()
    args = parse_training_args(["--dataset", "SUN", "--data_dir", str(tmp_path / "data"),
                                "--cache_dir", str(tmp_path / "cache"), "--attribute_encoder", sentence_encoder])
    with pytest.raises(ValueError, match=r"'SUN' has no attribute word vectors \(field 'word_vectors'\) and no "
                                         r"attribute names .*DATA_DIR/w2v/<DS>_attribute\.pkl"):
        load_data(args)


def test_an_encoder_that_cannot_be_loaded_says_what_to_pass(tmp_path):
    layout = _hub_layout_without_word_vectors(tmp_path)
    with pytest.raises(OSError, match=r"(?s)'layout' has no attribute word vectors.*'scegg-test/no-such-encoder'.*"
                                      r"hf download scegg-test/no-such-encoder.*--attribute_encoder ENCODER_DIR"):
        load_zsl_dataset(str(layout), cache_dir=tmp_path / "cache", attribute_encoder="scegg-test/no-such-encoder")
