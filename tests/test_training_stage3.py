"""Stage 3 follows the published TF-VAEGAN / SC-EGG mechanics: per-network learning rates, the
order of the two feedback loops, and unseen fakes of L_UCE made without feedback."""
import pytest
import torch
from accelerate import Accelerator
from conftest import tiny_config_kwargs

from modeling_scegg import SCEGGConfig, SCEGGModel
from modeling_scegg.training import stage3
from modeling_scegg.training.arguments import SCEGGTrainingArguments
from modeling_scegg.training.checkpointing import CheckpointManager
from modeling_scegg.training.common import RunContext
from modeling_scegg.training.state import SplitFeatures


def _context(tmp_path, config_overrides=None, **args) -> RunContext:
    torch.manual_seed(0)
    config = SCEGGConfig(**tiny_config_kwargs(**(config_overrides or {})))
    model = SCEGGModel(config)
    model.set_class_semantics(torch.rand(6, 7), torch.randn(7, 6))
    defaults = dict(output_dir=str(tmp_path), batch_size=4, log_with="none", checkpoint_every=1000, stage3_epochs=2)
    return RunContext(args=SCEGGTrainingArguments(**{**defaults, **args}), model=model, accelerator=Accelerator(),
                      checkpoints=CheckpointManager(tmp_path))


def _cache(num: int = 10) -> SplitFeatures:
    labels = torch.tensor([0, 2, 3, 5] * (num // 4 + 1))[:num]
    return SplitFeatures(features=torch.rand(num, 12), labels=labels)


def test_each_network_trains_at_its_published_learning_rate(tmp_path):
    ctx = _context(tmp_path, stage3_lr=1e-3, decoder_lr=1e-4, feedback_lr=1e-5)
    state = stage3._stage3_state(ctx, _cache())
    rates = {name: opt.param_groups[0]["lr"] for name, opt in state.optimizers.items()}
    assert rates == {"encoder": 1e-3, "generator": 1e-3, "critic": 1e-3, "decoder": 1e-4, "feedback": 1e-5}
    betas = {name: opt.param_groups[0]["betas"] for name, opt in state.optimizers.items()}
    assert betas["encoder"] == (0.9, 0.999)
    assert {betas[n] for n in ("generator", "critic", "decoder", "feedback")} == {(0.5, 0.999)}


def test_decoder_rate_does_not_follow_stage3_lr(tmp_path):
    ctx = _context(tmp_path, stage3_lr=1e-5)
    assert stage3.learning_rates(ctx)["decoder"] == 1e-4  # the published dec_lr, whatever stage3_lr is
    assert stage3.learning_rates(ctx)["feedback"] == 1e-5  # feed_lr unset: F follows stage3_lr


@pytest.mark.parametrize("order, expected", [
    ("epoch", [False, False, False, True, True, True] * 2),
    ("batch", [False, True] * 6),
])
def test_pass_order(order, expected):
    assert [stage3.pass_uses_feedback(step, 3, order) for step in range(12)] == expected


def test_an_epoch_runs_all_batches_without_feedback_then_all_with(tmp_path, monkeypatch):
    """10 images in batches of 4 give 3 batch positions; the published epoch is 3 passes without
    feedback followed by 3 with, and only feedback passes step F."""
    ctx = _context(tmp_path, config_overrides={"feedback_weight": 1.0})
    seen = []
    original = stage3.generator_step

    def spy(s, weight, with_feedback):
        seen.append((weight, with_feedback))
        return original(s, weight, with_feedback)

    monkeypatch.setattr(stage3, "generator_step", spy)
    stage3.train_stage3(ctx, _cache(10))
    assert seen == ([(0.0, False)] * 3 + [(1.0, True)] * 3) * 2


@pytest.mark.parametrize("prior_feedback, expected_calls", [(False, 0), (True, 1)])
def test_unseen_fakes_of_eq15_are_made_without_feedback(tmp_path, prior_feedback, expected_calls):
    """In the feedback loop, L_UCE's fakes G(eps, a_u) skip F (published); the switch restores
    the earlier behaviour of correcting them too."""
    ctx = _context(tmp_path, config_overrides={"feedback_weight": 1.0, "egs_prior_feedback": prior_feedback})
    state = stage3._stage3_state(ctx, _cache())
    calls = []
    state.nets["feedback"].register_forward_hook(lambda *_: calls.append(1))
    x, a, y = stage3.draw_batch(state)
    recon = torch.rand_like(x)
    loss = stage3.synthesis_loss(state, recon, a, y, feedback_weight=1.0)
    assert torch.isfinite(loss) and len(calls) == expected_calls


def test_unseen_labels_of_eq15_are_unseen_classes(tmp_path, monkeypatch):
    ctx = _context(tmp_path)
    state = stage3._stage3_state(ctx, _cache())
    captured = {}

    def eq13(seen_scores, seen_labels, unseen_scores, unseen_labels, lambda_s, lambda_u):
        captured["unseen"] = unseen_labels
        return seen_scores.sum() * 0

    monkeypatch.setattr(stage3, "embedding_guided_synthesis_loss_eq13", eq13)
    x, a, y = stage3.draw_batch(state)
    stage3.synthesis_loss(state, x, a, y, feedback_weight=0.0)
    assert set(captured["unseen"].tolist()) <= {1, 4} and len(captured["unseen"]) == len(y)
