"""What every stage shares: ending a stage must leave the model's networks as a snapshot or a
saved model would load them, whatever mixed precision the stage trained in."""
import copy

import torch
from torch import nn

from modeling_scegg.training.common import release_stage_memory


def test_a_finished_stage_leaves_no_autocast_on_the_model(bf16_accelerator):
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    plain = copy.deepcopy(network)
    x = torch.randn(16, 64)
    prepared = bf16_accelerator.prepare(network)
    assert not torch.equal(prepared(x), plain(x))  # during the stage: bf16 autocast
    release_stage_memory(bf16_accelerator, prepared)
    assert torch.equal(network(x), plain(x))
