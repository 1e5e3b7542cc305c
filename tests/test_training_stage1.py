"""Stage 1: the network training runs computes the SCEN's explicit equations, gradients included."""
import pytest
import torch
from conftest import tiny_config_kwargs

from modeling_scegg import SCEGGConfig, SCEGGModel
from modeling_scegg.modeling_scegg import stage1_loss_eq16
from modeling_scegg.training.stage1 import Stage1Network


@pytest.mark.parametrize("num_regions", [2, 5])  # the SC network's two product orders
def test_stage1_network_matches_the_explicit_scen(num_regions):
    torch.manual_seed(0)
    model = SCEGGModel(SCEGGConfig(**tiny_config_kwargs(num_regions=num_regions)))
    model.set_class_semantics(torch.rand(6, 7), torch.randn(7, 6))
    with torch.no_grad():
        model.scen.local_embedding.attention_weight.normal_()
    network = Stage1Network(model)
    x, labels = torch.rand(4, num_regions, 12), torch.tensor([0, 2, 3, 5])
    params = [p for p in network.parameters() if p.requires_grad]

    def loss_and_grads(local_scores, global_scores):
        loss = stage1_loss_eq16(local_scores, global_scores, labels, 1.0, 1.0, model.seen_class_ids)
        return loss, torch.autograd.grad(loss, params)

    explicit_local, explicit_global, _, _ = model.scen(x, model.class_attributes)
    fast_local, fast_global = network(x)
    torch.testing.assert_close(fast_local, explicit_local)
    torch.testing.assert_close(fast_global, explicit_global)
    explicit_loss, explicit_grads = loss_and_grads(*model.scen(x, model.class_attributes)[:2])
    fast_loss, fast_grads = loss_and_grads(*network(x))
    torch.testing.assert_close(fast_loss, explicit_loss)
    for fast, explicit in zip(fast_grads, explicit_grads):
        torch.testing.assert_close(fast, explicit)
