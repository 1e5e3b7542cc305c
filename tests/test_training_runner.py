"""A run has one Accelerator: every stage prepares what it trains on it and hands it back clean."""
import accelerate
import torch
from test_training_pipeline import tiny_argv
from torch import nn

from modeling_scegg.training import parse_training_args, run_pipeline
from modeling_scegg.training.common import release_stage_memory


def test_a_run_and_its_validation_view_build_one_accelerator_each(tmp_path, monkeypatch):
    built = []
    original = accelerate.Accelerator.__init__

    def counting(self, *args, **kwargs):
        built.append(kwargs.get("project_config"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "__init__", counting)
    argv = tiny_argv(tmp_path / "out", tmp_path / "cache", "--stage3_epochs", "1", "--plots", "false",
                     "--calibration", "validation")
    results = run_pipeline(parse_training_args(argv))
    assert "calibration" in results
    # the validation view's run and the real run, each with its own output folder and trackers
    assert sorted(str(config.project_dir) for config in built) == [str(tmp_path / "out"),
                                                                    str(tmp_path / "out" / "validation")]


def test_a_released_stage_leaves_nothing_for_the_next_stage_to_save(tmp_path):
    """The next stage's step checkpoints (`save_state`) must hold only its own networks."""
    accelerator = accelerate.Accelerator()
    network = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    prepared, optimizer = accelerator.prepare(network, optimizer)
    prepared(torch.rand(3, 4)).sum().backward()
    release_stage_memory(accelerator, prepared)
    assert network.weight.grad is None
    accelerator.save_state(str(tmp_path / "next_stage"))
    saved = sorted(p.name for p in (tmp_path / "next_stage").iterdir())
    assert not [name for name in saved if name.startswith(("model", "optimizer"))], saved
