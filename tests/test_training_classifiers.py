"""The final classifiers' inputs: [x, Dec(x), Dec_hidden(x)] built part by part, stored in the
dtype their training autocast computes in; the seen-side diagnostic of their scores."""
import numpy as np
import pytest
import torch
from conftest import tiny_config_kwargs
from torch import nn

from modeling_scegg import SCEGGConfig, SCEGGModel
from modeling_scegg.training.classifiers import autocast_dtype, side_accuracies


def test_inputs_of_several_parts_are_those_of_their_concatenation():
    torch.manual_seed(0)
    model = SCEGGModel(SCEGGConfig(**tiny_config_kwargs()))
    real, synthetic = torch.rand(7, 12), torch.rand(5, 12)
    whole = model.classifier_features(torch.cat([real, synthetic]))
    parts = model.classifier_inputs([real, synthetic], chunk=3)
    assert parts.shape == (12, model.config.classifier_input_dim)
    torch.testing.assert_close(parts, whole)
    assert model.classifier_inputs([real, synthetic], torch.bfloat16).dtype == torch.bfloat16


def test_bf16_inputs_change_nothing_a_bf16_autocast_classifier_computes(bf16_accelerator):
    assert autocast_dtype(bf16_accelerator.mixed_precision) == torch.bfloat16
    assert autocast_dtype("no") == torch.float32
    torch.manual_seed(0)
    classifier = bf16_accelerator.prepare(nn.Linear(40, 9))
    x = torch.randn(16, 40)
    assert torch.equal(classifier(x.to(torch.bfloat16)), classifier(x))
    assert not torch.equal(x.to(torch.bfloat16).float(), x)  # though the stored inputs are rounded


def test_side_accuracies_restrict_the_gzsl_scores_to_one_side():
    """Seen classes 0, 1; unseen 2, 3. Every seen image scores an unseen class highest (S = 0), yet
    among the seen classes alone the first is right and the second wrong: seen-only 50%."""
    seen, unseen = np.array([0, 1]), np.array([2, 3])
    gzsl_seen = np.array([[2.0, 1.0, 5.0, 0.0],    # label 0: seen-only right
                          [2.0, 1.0, 0.0, 5.0]])   # label 1: seen-only wrong
    gzsl_unseen = np.array([[0.0, 0.0, 1.0, 3.0],  # label 3: unseen-only right
                            [9.0, 0.0, 1.0, 3.0]])  # label 2: unseen-only wrong (and called seen)
    refs = np.array([0, 1, 3, 2])
    sides = side_accuracies(gzsl_seen, gzsl_unseen, refs, seen, unseen)
    assert sides == {"gzsl_seen_only": pytest.approx(50.0), "gzsl_unseen_only": pytest.approx(50.0)}
