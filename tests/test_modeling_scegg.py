"""SCEGGModel: shapes, the equations on hand-computed cases, checkpoints and remote code."""
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, TINY_CROP, tiny_config_kwargs

from modeling_scegg import SCEGGConfig, SCEGGForImageClassification, SCEGGModel
from modeling_scegg import modeling_scegg as mm


def _regions(batch=3, seed=1):
    return torch.rand(batch, 5, 12, generator=torch.Generator().manual_seed(seed))


# -- forward contract -----------------------------------------------------------------------------
def test_forward_shapes(tiny_model):
    out = tiny_model(_regions(), output_attentions=True)
    assert out.logits.shape == (3, 6)
    assert out.czsl_logits.shape == (3, 2)
    assert out.dense_features.shape == (3, 12)
    assert out.local_scores.shape == (3, 6)
    assert out.attentions.shape == (3, 7, 5)
    torch.testing.assert_close(out.attentions.sum(-1), torch.ones(3, 7))
    assert tiny_model(_regions()).attentions is None


def test_forward_accepts_half_precision_input(tiny_model):
    x = _regions()
    torch.testing.assert_close(tiny_model(x.half()).logits, tiny_model(x.half().float()).logits)


def test_attention_starts_uniform():
    model = SCEGGModel(SCEGGConfig(**tiny_config_kwargs()))
    model.set_class_semantics(torch.rand(6, 7), torch.randn(7, 6))
    attention = model(_regions(), output_attentions=True).attentions
    torch.testing.assert_close(attention, torch.full_like(attention, 1 / 5))


def test_len_matches_equations_1_to_3(tiny_model):
    """Recompute Eq. 1-3 with explicit loops over attributes for one image."""
    local = tiny_model.scen.local_embedding
    with torch.no_grad():
        local.attention_weight.normal_()
    x = _regions(1)
    h, attention, scores = local(x, tiny_model.class_attributes)
    regions = x[0] / x[0].norm(dim=-1, keepdim=True)
    V, Wa, Wb = local.attribute_queries, local.attention_weight, local.embedding_weight
    e = []
    for n in range(7):
        logits = torch.stack([V[n] @ Wa @ regions[r] for r in range(5)])
        attn = torch.exp(logits) / torch.exp(logits).sum()
        h_n = sum(attn[r] * regions[r] for r in range(5))
        torch.testing.assert_close(h[0, n], h_n)
        e.append(h_n @ Wb.t() @ V[n])
    att = tiny_model.class_attributes
    expected = torch.stack([torch.stack(e) @ (att[c] / att[c].norm()) for c in range(6)])
    torch.testing.assert_close(scores[0], expected)


def test_semantic_compression_runs_along_attributes(tiny_model):
    sc = tiny_model.scen.compression
    h = torch.randn(2, 7, 12)
    g = sc(h)
    assert g.shape == (2, 12)
    first, second = sc.net[0], sc.net[2]
    manual = second(F.leaky_relu(first(h[1, :, 3]), 0.01))
    torch.testing.assert_close(g[1, 3], manual.squeeze())


def test_runtime_compression_switch(tiny_model):
    h = torch.randn(2, 7, 12)
    torch.testing.assert_close(tiny_model.scen.compress(h), h.mean(1))
    mlp = SCEGGModel(SCEGGConfig(**tiny_config_kwargs(runtime_compression="mlp")))
    torch.testing.assert_close(mlp.scen.compress(h), mlp.scen.compression(h))


def test_attend_is_eq_1_to_3_without_local_features(tiny_model):
    """The form training runs gives the attention and p_l of the explicit equations."""
    local = tiny_model.scen.local_embedding
    with torch.no_grad():
        local.attention_weight.normal_()
    x = _regions()
    h, attention, scores = local(x, tiny_model.class_attributes)
    regions, fast_attention, fast_scores = local.attend(x, tiny_model.class_attributes)
    torch.testing.assert_close(regions, F.normalize(x, dim=-1))
    torch.testing.assert_close(fast_attention, attention)
    torch.testing.assert_close(fast_scores, scores)
    torch.testing.assert_close(local.attended_embedding(attention, regions), local.attribute_embedding(h))


@pytest.mark.parametrize("num_regions", [2, 9])  # R (A + D) below and above A D: both product orders
def test_compress_attended_equals_compression_of_local_features(tiny_model, num_regions):
    sc = tiny_model.scen.compression
    generator = torch.Generator().manual_seed(num_regions)
    attention = torch.softmax(torch.randn(3, 7, num_regions, generator=generator), dim=-1)
    regions = torch.rand(3, num_regions, 12, generator=generator)
    torch.testing.assert_close(sc.compress_attended(attention, regions), sc(attention @ regions))
    torch.testing.assert_close(tiny_model.scen.compress_attended(attention, regions), (attention @ regions).mean(1))


def _stage1_outputs_and_grads(model, x, explicit: bool):
    """p_l and p_g of stage 1 and the gradients of every SCEN parameter under one loss, through
    the explicit equations (h formed) or the form training runs (h never formed)."""
    scen = model.scen
    model.zero_grad(set_to_none=True)
    if explicit:
        local_scores, global_scores, _, _ = scen(x, model.class_attributes)
    else:
        regions, attention, local_scores = scen.local_embedding.attend(x, model.class_attributes)
        global_scores = scen.global_classifier(scen.compression.compress_attended(attention, regions))
    weights = torch.linspace(-1, 1, local_scores.numel()).view_as(local_scores)
    (local_scores.float() * weights).sum().add((global_scores.float() * weights.flip(0)).sum()).backward()
    grads = {name: p.grad.clone() for name, p in scen.named_parameters() if p.grad is not None}
    return local_scores.float(), global_scores.float(), grads


@pytest.mark.parametrize("num_regions, slope", [(3, 0.01), (3, -0.2), (9, 0.01)])  # re-associated / explicit SC
def test_stage1_forms_give_the_explicit_values_and_gradients(num_regions, slope):
    """The layout-aware stage-1 form (region-major attention, bias inside the product, in-place
    LeakyReLU) computes the values and gradients of Eq. 1-5 as written."""
    torch.manual_seed(0)
    model = SCEGGModel(SCEGGConfig(**tiny_config_kwargs(num_regions=num_regions, sc_negative_slope=slope)))
    model.set_class_semantics(torch.rand(6, 7), torch.randn(7, 6))
    with torch.no_grad():
        model.scen.local_embedding.attention_weight.normal_()
        model.scen.compression.net[0].bias.normal_()
    x = torch.rand(4, num_regions, 12, generator=torch.Generator().manual_seed(2))
    *explicit, explicit_grads = _stage1_outputs_and_grads(model, x, explicit=True)
    *fast, fast_grads = _stage1_outputs_and_grads(model, x, explicit=False)
    for a, b in zip(fast, explicit):
        torch.testing.assert_close(a, b)
    assert fast_grads.keys() == explicit_grads.keys() and "compression.net.0.bias" in fast_grads
    for name, grad in explicit_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, msg=name)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 products: equal up to bf16 rounding
        *mixed, mixed_grads = _stage1_outputs_and_grads(model, x, explicit=False)
    for a, b in zip(mixed, explicit):
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)
    for name, grad in explicit_grads.items():
        torch.testing.assert_close(mixed_grads[name].float(), grad, atol=0.05 * grad.abs().max().item(), rtol=0.05,
                                   msg=name)


def test_dense_features_follow_the_explicit_equations(tiny_model):
    x = _regions()
    for model in (tiny_model, SCEGGModel(SCEGGConfig(**tiny_config_kwargs(runtime_compression="mlp")))):
        model.set_class_semantics(tiny_model.class_attributes, torch.randn(7, 6))
        h, attention, scores = model.scen.local_embedding(x, model.class_attributes)
        raw = model.raw_dense_features(x)
        torch.testing.assert_close(raw["features"], model.scen.compress(h))
        torch.testing.assert_close(raw["local_scores"], scores)


def test_pooled_baseline_skips_scen():
    model = SCEGGModel(SCEGGConfig(**tiny_config_kwargs(dense_feature_source="pooled")))
    model.set_class_semantics(torch.rand(6, 7))
    x = _regions()
    out = model(x, output_attentions=True)
    torch.testing.assert_close(out.dense_features, x.mean(1))
    assert out.local_scores is None and out.attentions is None

    with pytest.raises(ValueError, match="no SCEN"):
        model(x, output_attribute_scores=True)


def test_attribute_scores_are_e_l_and_only_computed_when_asked(tiny_model):
    """e_l (Eq. 2) is what p_l (Eq. 3) is made of: p_l = e_l . a(y) / |a(y)|, exactly."""
    with torch.no_grad():
        tiny_model.scen.local_embedding.attention_weight.normal_()
    x = _regions()
    assert tiny_model(x).attribute_scores is None
    out = tiny_model(x, output_attribute_scores=True)
    assert out.attribute_scores.shape == (3, 7)
    torch.testing.assert_close(out.attribute_scores @ F.normalize(tiny_model.class_attributes, dim=-1).t(),
                               out.local_scores)
    torch.testing.assert_close(out.logits, tiny_model(x).logits)


def test_scaler_maps_training_range_to_unit_interval(tiny_model):
    raw = torch.randn(40, 12) * 3 + 1
    tiny_model.scen.fit_scaler(raw)
    scaled = tiny_model.scen.scale(raw)
    torch.testing.assert_close(scaled.min(0).values, torch.zeros(12))
    torch.testing.assert_close(scaled.max(0).values, torch.ones(12))


def test_classifier_input_switch(tiny_model):
    x = torch.rand(3, 12)
    assert tiny_model.classifier_features(x).shape == (3, 12 + 7 + 22)
    plain = SCEGGModel(SCEGGConfig(**tiny_config_kwargs(classifier_input="plain")))
    assert plain.classifier_features(x) is x
    assert plain.gzsl_classifier.fc.in_features == 12


def test_synthesize_is_reproducible_and_uses_feedback(tiny_model):
    features, labels = tiny_model.synthesize([1, 4], 5, generator=torch.Generator().manual_seed(3))
    assert features.shape == (10, 12) and labels.tolist() == [1] * 5 + [4] * 5
    assert ((features > 0) & (features < 1)).all()
    again, _ = tiny_model.synthesize([1, 4], 5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(features, again)
    tiny_model.config.synthesis_feedback_weight = 0.0
    without, _ = tiny_model.synthesize([1, 4], 5, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(features, without)


def test_generate_features_two_pass_matches_manual(tiny_model):
    eggn = tiny_model.eggn
    z, a = torch.randn(4, 7), torch.rand(4, 7)
    first = eggn.generator(z, a)
    _, hidden = eggn.decoder(first)
    expected = eggn.generator(z, a, eggn.feedback(hidden), 0.5)
    got = mm.generate_features(eggn.generator, eggn.decoder, eggn.feedback, z, a, 0.5)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(mm.generate_features(eggn.generator, eggn.decoder, eggn.feedback, z, a, 0.0), first)


def test_decoder_output_is_unit_norm(tiny_model):
    attributes, hidden = tiny_model.eggn.decoder(torch.rand(5, 12))
    torch.testing.assert_close(attributes.norm(dim=-1), torch.ones(5))
    assert hidden.shape == (5, 22)


def test_init_follows_the_published_code():
    config = SCEGGConfig(**tiny_config_kwargs(encoder_hidden_dim=800))
    model = SCEGGModel(config)
    assert model.scen.local_embedding.attention_weight.abs().sum() == 0
    assert abs(model.eggn.encoder.fc1.weight.std().item() - 0.02) < 0.002
    assert model.eggn.encoder.fc1.bias.abs().sum() == 0
    assert model.scen.global_classifier.bias.abs().sum() > 0  # torch default, not TF-VAEGAN's


def test_frozen_word_vectors_switch():
    frozen = SCEGGModel(SCEGGConfig(**tiny_config_kwargs(train_word_vectors=False)))
    assert not frozen.scen.local_embedding.attribute_queries.requires_grad
    frozen.set_class_semantics(torch.rand(6, 7), torch.randn(7, 6) * 4)
    torch.testing.assert_close(frozen.scen.local_embedding.attribute_queries.norm(dim=-1), torch.ones(7))


# -- losses on hand-computed cases ------------------------------------------------------------------
def test_eq6_eq7_cross_entropy_over_all_and_seen_classes():
    scores = torch.tensor([[1.0, 2.0, 0.0, 3.0]])
    labels = torch.tensor([1])
    all_classes = -(2.0 - math.log(math.e + math.e ** 2 + 1 + math.e ** 3))
    assert mm.local_embedding_cross_entropy_eq6(scores, labels).item() == pytest.approx(all_classes, rel=1e-6)
    seen = torch.tensor([0, 1])
    seen_only = -(2.0 - math.log(math.e + math.e ** 2))
    assert mm.global_embedding_cross_entropy_eq7(scores, labels, seen).item() == pytest.approx(seen_only, rel=1e-6)
    with pytest.raises(ValueError, match="outside the class subset"):
        mm.local_embedding_cross_entropy_eq6(scores, torch.tensor([3]), seen)


def test_eq16_weights_the_two_terms():
    scores_l = torch.tensor([[0.0, 1.0]])
    scores_g = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([0])
    ce_l = math.log(1 + math.e)
    ce_g = -(2 - math.log(math.e ** 2 + 1))
    assert mm.stage1_loss_eq16(scores_l, scores_g, y, 1.0, 0.5).item() == pytest.approx(ce_l + 0.5 * ce_g, rel=1e-6)
    assert mm.stage1_loss_eq16(scores_l, scores_g, y, 0.0, 1.0).item() == pytest.approx(ce_g, rel=1e-6)


def test_eq8_regression_mse_and_summed():
    pg = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    pl = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert mm.semantic_consistent_regression_loss_eq8(pg, pl, "mse").item() == pytest.approx(7 / 4)
    assert mm.semantic_consistent_regression_loss_eq8(pg, pl, "sum_l2").item() == pytest.approx(7 / 2)
    target = pl.clone().requires_grad_(True)
    mm.semantic_consistent_regression_loss_eq8(pg.requires_grad_(True), target).backward()
    assert target.grad is None  # p_l is a frozen target


def test_eq10_vae_loss():
    recon = torch.tensor([[0.5, 0.25]])
    target = torch.tensor([[1.0, 0.0]])
    mu, logvar = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    bce = -math.log(0.5) - math.log(0.75)
    kld = -0.5 * (1 + 0 - 1 - 1)
    assert mm.tfvaegan_vae_loss_eq10(recon, target, mu, logvar).item() == pytest.approx(bce + kld, rel=1e-6)


def test_eq11_critic_generator_and_penalty():
    real, fake = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])
    assert mm.wgan_critic_loss_eq11(real, fake, 10.0).item() == pytest.approx(10 * (0.5 - 2.0))
    assert mm.generator_adversarial_loss_eq11(fake, 2.0).item() == pytest.approx(-1.0)

    def linear_critic(x, a):  # gradient w.r.t. x is (3, 4): norm 5, penalty (5 - 1)^2
        return x @ torch.tensor([[3.0], [4.0]]) + a.sum(-1, keepdim=True)

    penalty = mm.gradient_penalty_eq11(linear_critic, torch.rand(6, 2), torch.rand(6, 2), torch.rand(6, 3))
    assert penalty.item() == pytest.approx(16.0)


def test_adaptive_penalty_weight():
    bounds = (1.001, 1.05)
    assert mm.adapt_gradient_penalty_weight(10.0, 2.0, bounds, 1.1) == pytest.approx(11.0)
    assert mm.adapt_gradient_penalty_weight(10.0, 0.5, bounds, 1.1) == pytest.approx(10 / 1.1)
    assert mm.adapt_gradient_penalty_weight(10.0, 1.02, bounds, 1.1) == 10.0


def test_eq12_weighted_and_plain_l1():
    pred = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 4.0], [0.0, 1.0]])
    # sample 1: d = (3, -4), ||d|| = 5, sum |d|^3 / 5 = (27 + 64) / 5; sample 2: 1
    assert mm.attribute_reconstruction_loss_eq12(pred, target).item() == pytest.approx((91 / 5 + 1) / 2)
    assert mm.attribute_reconstruction_loss_eq12(pred, target, "l1").item() == pytest.approx((7 + 1) / 2)


def test_eq9_eq13_eq18_combinations():
    seen_scores, unseen_scores = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    egs = mm.embedding_guided_synthesis_loss_eq13(seen_scores, torch.tensor([0]), unseen_scores,
                                                  torch.tensor([1]), 0.1, 0.5)
    expected = 0.1 * math.log(2) + 0.5 * (math.log(math.e + 1))
    assert egs.item() == pytest.approx(expected, rel=1e-6)
    l_vg = mm.tfvaegan_loss_eq9(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0), 0.25)
    assert l_vg.item() == 4.0
    assert mm.stage3_loss_eq18(l_vg, egs).item() == pytest.approx(4.0 + expected, rel=1e-6)


# -- input validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, error, message",
    [
        (torch.rand(2, 4, 12), ValueError, r"num_regions=5.*got \(2, 4, 12\)"),
        (torch.rand(2, 5, 11), ValueError, r"feature_dim=12.*got \(2, 5, 11\)"),
        (torch.rand(5, 12), ValueError, r"got \(5, 12\)"),
        (torch.ones(2, 5, 12, dtype=torch.long), TypeError, "floating point.*int64"),
        (torch.full((2, 5, 12), float("nan")), ValueError, "NaN or Inf"),
        (torch.full((2, 5, 12), float("inf")), ValueError, "NaN or Inf"),
    ],
)
def test_bad_inputs_name_expected_and_received(tiny_model, bad, error, message):
    with pytest.raises(error, match=message):
        tiny_model(bad)


def test_numpy_input_is_rejected_with_a_clear_type_error(tiny_model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        tiny_model(_regions().numpy())


def test_semantics_of_wrong_shape_are_rejected(tiny_model):
    with pytest.raises(ValueError, match=r"class_attributes.*\(6, 7\).*\(6, 8\)"):
        tiny_model.set_class_semantics(torch.rand(6, 8))
    with pytest.raises(ValueError, match=r"word_vectors.*\(7, 6\).*\(7, 5\)"):
        tiny_model.set_class_semantics(torch.rand(6, 7), torch.rand(7, 5))


def test_model_without_semantics_refuses_to_predict():
    with pytest.raises(RuntimeError, match="set_class_semantics"):
        SCEGGModel(SCEGGConfig(**tiny_config_kwargs()))(_regions())


def test_synthesize_rejects_unknown_classes(tiny_model):
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        tiny_model.synthesize([7], 2)


# -- checkpoints -------------------------------------------------------------------------------------
def test_save_and_load_are_bit_identical(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = SCEGGModel.from_pretrained(tmp_path).eval()
    x = _regions()
    a, b = tiny_model(x, output_attentions=True), loaded(x, output_attentions=True)
    for key in ("logits", "czsl_logits", "dense_features", "local_scores", "attentions"):
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(loaded.class_attributes, tiny_model.class_attributes)
    assert torch.equal(loaded.scen.feature_max, tiny_model.scen.feature_max)
    assert loaded.config.id2label[2] == "bird_2"


def test_auto_classes_and_auto_map(tiny_model, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_scegg.SCEGGConfig",
                                  "AutoModel": "modeling_sc_egg.SCEGGModel",
                                  "AutoModelForImageClassification": "modeling_sc_egg.SCEGGForImageClassification"}
    assert {"configuration_scegg.py", "modeling_sc_egg.py"} <= {p.name for p in tmp_path.iterdir()}
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SCEGGConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is SCEGGModel
    image_model = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(image_model) is SCEGGForImageClassification and image_model.backbone is None


def test_checkpoint_for_other_sizes_is_rejected(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    other = SCEGGConfig(**tiny_config_kwargs(feature_dim=10))
    with pytest.raises(ValueError, match=r"feature_dim: checkpoint 12 vs config 10"):
        SCEGGModel.from_pretrained(tmp_path, config=other)


def test_incomplete_checkpoint_is_rejected(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["gzsl_classifier.fc.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="gzsl_classifier.fc.weight"):
        SCEGGModel.from_pretrained(tmp_path)


_REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_scegg" or name.startswith("modeling_scegg."):
                raise ModuleNotFoundError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Block())
    try:
        import modeling_scegg  # noqa: F401
        raise SystemExit("the package is importable: the test would prove nothing")
    except ModuleNotFoundError:
        pass
    import torch
    from transformers import AutoModel
    folder, inputs, outputs = sys.argv[1:4]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    x = torch.load(inputs, weights_only=True)
    with torch.no_grad():
        out = model(x)
    torch.save({"logits": out.logits, "czsl_logits": out.czsl_logits}, outputs)
    """
)


def test_remote_code_loads_without_the_package(tiny_model, tmp_path):
    folder = tmp_path / "checkpoint"
    tiny_model.save_pretrained(folder)
    x = _regions()
    torch.save(x, tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    script = tmp_path / "remote.py"
    script.write_text(_REMOTE_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        local = tiny_model(x)
    assert torch.equal(remote["logits"], local.logits)
    assert torch.equal(remote["czsl_logits"], local.czsl_logits)
    assert REPO_ROOT.exists()


def test_seen_score_offset_calibrates_gzsl_logits(tiny_model):
    """Calibrated stacking lowers every seen class's GZSL score by the offset; CZSL is untouched."""
    regions = torch.rand(5, 5, 12)
    with torch.no_grad():
        plain = tiny_model(regions)
        tiny_model.config.seen_score_offset = 2.5
        shifted = tiny_model(regions)
    seen = tiny_model.config.seen_class_ids
    unseen = tiny_model.config.unseen_class_ids
    torch.testing.assert_close(shifted.logits[:, seen], plain.logits[:, seen] - 2.5)
    torch.testing.assert_close(shifted.logits[:, unseen], plain.logits[:, unseen])
    torch.testing.assert_close(shifted.czsl_logits, plain.czsl_logits)


# -- SCEGGForImageClassification: pixels in ----------------------------------------------------------------
def _pixels(batch=2, size=TINY_CROP, seed=3):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_pixels_go_through_the_backbone_as_row_major_regions(tiny_image_model):
    pixels = _pixels()
    with torch.no_grad():
        feature_map = tiny_image_model.backbone(pixels).feature_maps[-1]
        regions = feature_map.flatten(2).transpose(1, 2)
        from_pixels = tiny_image_model(pixel_values=pixels, output_attentions=True)
        from_regions = tiny_image_model(region_features=regions, output_attentions=True)
    assert feature_map.shape == (2, 12, 2, 2)
    torch.testing.assert_close(regions[:, 1], feature_map[:, :, 0, 1])  # region r = h * W + w
    for key in ("logits", "czsl_logits", "dense_features", "attentions"):
        assert torch.equal(from_pixels[key], from_regions[key]), key
    assert from_pixels.logits.shape == (2, 6) and from_pixels.loss is None


def test_labels_give_the_gzsl_cross_entropy(tiny_image_model):
    labels = torch.tensor([4, 0])
    out = tiny_image_model(pixel_values=_pixels(), labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    out.loss.backward()
    assert tiny_image_model.gzsl_classifier.fc.weight.grad is not None
    assert tiny_image_model(pixel_values=_pixels(), labels=labels, return_dict=False)[0].dim() == 0
    with pytest.raises(ValueError, match=r"labels must be 2 class ids in \[0, 6\)"):
        tiny_image_model(pixel_values=_pixels(), labels=torch.tensor([6, 0]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one of pixel_values"),
    (dict(pixel_values=_pixels(), region_features=torch.rand(2, 4, 12)), "exactly one of pixel_values"),
    (dict(pixel_values=torch.rand(2, 64, 64)), r"pixel_values must be a tensor of shape \(batch, 3, height, width\)"),
    (dict(pixel_values=_pixels(size=96)), r"3 x 3 map = 9 regions, but the model was trained on num_regions=4.*image processor"),
])
def test_bad_image_inputs_say_what_is_expected(tiny_image_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_image_model(**kwargs)


def test_a_model_without_backbone_points_to_attach_backbone(tiny_model):
    image_model = SCEGGForImageClassification(tiny_model.config)
    image_model.load_state_dict(tiny_model.state_dict())
    with pytest.raises(ValueError, match="no region backbone.*scegg attach-backbone MODEL WEIGHTS"):
        image_model(pixel_values=_pixels())
    with torch.no_grad():
        assert torch.equal(image_model(region_features=_regions()).logits, tiny_model(_regions()).logits)


def test_backbone_of_other_width_is_refused():
    from conftest import TINY_BACKBONE
    from transformers import ResNetConfig

    backbone = ResNetConfig(**TINY_BACKBONE, out_features=["stage4"])
    with pytest.raises(ValueError, match="12 channels but the model reads region features of feature_dim=10"):
        SCEGGForImageClassification(SCEGGConfig(**tiny_config_kwargs(num_regions=4, feature_dim=10, backbone_config=backbone)))


def test_backbone_travels_in_the_same_checkpoint_and_old_classes_still_load(tiny_image_model, tmp_path):
    from safetensors import safe_open

    tiny_image_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        keys = set(handle.keys())
    assert "backbone.embedder.embedder.convolution.weight" in keys and "scen.feature_max" in keys
    assert json.loads((tmp_path / "config.json").read_text())["backbone_config"]["out_features"] == ["stage4"]
    loaded = SCEGGForImageClassification.from_pretrained(tmp_path).eval()
    pixels = _pixels()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixels).logits, tiny_image_model(pixel_values=pixels).logits)
        regions = tiny_image_model.pixel_region_features(pixels)
        as_base = SCEGGModel.from_pretrained(tmp_path).eval()  # region features only; the backbone is skipped
        assert type(as_base) is SCEGGModel and not hasattr(as_base, "backbone")
        assert torch.equal(as_base(regions).logits, tiny_image_model(region_features=regions).logits)


def test_a_checkpoint_missing_its_backbone_weights_is_rejected(tiny_image_model, tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_image_model.save_pretrained(tmp_path)
    weights = {k: v for k, v in load_file(tmp_path / "model.safetensors").items() if not k.startswith("backbone.")}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks \d+ tensors of SCEGGModel, e.g. \['backbone\."):
        SCEGGForImageClassification.from_pretrained(tmp_path)


# -- new classes after training -----------------------------------------------------------------------------
def _with_refit_data(model):
    features = torch.rand(40, 12, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 2, 3, 5] * 10)
    model.record_refit_data(features, labels, num_synthetic=8, epochs=[3, 2], lr=1e-2)
    return model, features, labels


def test_refit_data_are_per_class_statistics_and_the_recipe(tiny_model):
    assert not tiny_model.has_refit_data
    model, features, labels = _with_refit_data(tiny_model)
    torch.testing.assert_close(model.seen_feature_mean[1], features[labels == 2].mean(0))
    torch.testing.assert_close(model.seen_feature_std[3], features[labels == 5].std(0, unbiased=False))
    assert model.seen_feature_count.tolist() == [10, 10, 10, 10] and model.has_refit_data
    assert (model.config.refit_num_synthetic, model.config.refit_epochs, model.config.refit_lr) == (8, [3, 2], 1e-2)


def test_add_classes_grows_every_tensor_with_a_row_per_class(tiny_model, tmp_path):
    model, _, _ = _with_refit_data(tiny_model)
    old_global = model.scen.global_classifier.weight.clone()
    old_regression = model.scen.regression_head.net[2].weight.clone()
    new_ids = model.add_classes(["bird_new_a", "bird_new_b"], torch.rand(2, 7) * 100,
                                generator=torch.Generator().manual_seed(0))
    assert new_ids == [6, 7]
    config = model.config
    assert config.num_classes == 8 and config.unseen_class_ids == [1, 4, 6, 7]
    assert config.id2label[7] == "bird_new_b" and config.label2id["bird_new_a"] == 6
    assert model.class_attributes.shape == (8, 7)
    torch.testing.assert_close(model.class_attributes[6:].norm(dim=-1), torch.ones(2))  # normalised as at training
    assert model.scen.global_classifier.out_features == 8 and model.scen.regression_head.net[2].out_features == 8
    assert torch.equal(model.scen.global_classifier.weight[:6], old_global)
    assert torch.equal(model.scen.regression_head.net[2].weight[:6], old_regression)
    out = model(_regions())
    assert out.logits.shape == (3, 8) and out.czsl_logits.shape == (3, 4) and out.local_scores.shape == (3, 8)
    model.save_pretrained(tmp_path)
    loaded = SCEGGModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(_regions()).logits, out.logits)
    assert loaded.config.id2label[6] == "bird_new_a" and loaded.has_refit_data


def test_new_head_rows_follow_the_attributes():
    attributes = F.normalize(torch.rand(6, 4), dim=-1)
    mapping = torch.randn(4, 10)  # a head whose rows (weights and bias) are linear in the attributes
    layer = torch.nn.Linear(9, 6)
    with torch.no_grad():
        layer.weight.copy_((attributes @ mapping)[:, :9])
        layer.bias.copy_((attributes @ mapping)[:, 9])
    new = F.normalize(torch.rand(2, 4), dim=-1)
    grown = mm.extend_rows_through_attributes(layer, attributes, new)
    torch.testing.assert_close(grown.weight[6:], (new @ mapping)[:, :9], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grown.bias[6:], (new @ mapping)[:, 9], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("names, attributes, message", [
    (["bird_0"], torch.rand(1, 7), "must be new and distinct"),
    (["x", "x"], torch.rand(2, 7), "must be new and distinct"),
    (["x"], torch.rand(1, 6), r"attributes must have shape \(new classes, num_attributes\) = \(1, 7\)"),
    (["x"], torch.zeros(1, 7), r"new classes \['x'\] have all-zero attributes"),
])
def test_bad_new_classes_are_refused(tiny_model, names, attributes, message):
    model, _, _ = _with_refit_data(tiny_model)
    with pytest.raises(ValueError, match=message):
        model.add_classes(names, attributes)
    assert model.config.num_classes == 6 and model.class_attributes.shape == (6, 7)


def test_checkpoints_without_refit_data_still_load_and_say_why_they_cannot_add(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    model, _, _ = _with_refit_data(tiny_model)
    model.save_pretrained(tmp_path)
    weights = {k: v for k, v in load_file(tmp_path / "model.safetensors").items() if not k.startswith("seen_feature_")}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})  # as saved before they existed
    old = SCEGGModel.from_pretrained(tmp_path)
    assert not old.has_refit_data and old.seen_feature_mean.abs().sum() == 0
    with pytest.raises(ValueError, match="stores no statistics of the real seen features"):
        old.add_classes(["x"], torch.rand(1, 7))


def test_equations_13_to_15_and_17_have_their_own_symbols():
    """L_EGS is lambda_s L_SCE + lambda_u L_UCE; L_S2 is L_SCR; the module docstring indexes every equation."""
    scores_s, scores_u = torch.randn(4, 6), torch.randn(4, 6)
    labels_s, labels_u = torch.tensor([0, 2, 3, 5]), torch.tensor([1, 4, 4, 1])
    sce = mm.synthetic_seen_cross_entropy_eq14(scores_s, labels_s)
    uce = mm.synthetic_unseen_cross_entropy_eq15(scores_u, labels_u)
    torch.testing.assert_close(sce, F.cross_entropy(scores_s, labels_s))
    torch.testing.assert_close(mm.embedding_guided_synthesis_loss_eq13(scores_s, labels_s, scores_u, labels_u, 0.3, 0.7),
                               0.3 * sce + 0.7 * uce)
    torch.testing.assert_close(mm.stage2_loss_eq17(scores_s, scores_u), F.mse_loss(scores_s, scores_u))
    for eq in range(1, 19):
        assert f"\n{eq:<6}" in mm.__doc__, f"Eq. {eq} is not in the module docstring's index"
