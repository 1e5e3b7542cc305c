"""modeling_scegg.export and `scegg attach-backbone`: a model trained on region features gets the
backbone they came from; the saved folder holds everything pictures-in needs."""
import json

import numpy as np
import pytest
import torch
from conftest import TINY_CROP, tiny_config_kwargs, tiny_image_processor, tiny_resnet
from hub_server import hub_endpoint, hub_server, run_client  # noqa: F401 - fixtures are used by name
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from modeling_scegg import SCEGGConfig, SCEGGForImageClassification, SCEGGImageProcessor, SCEGGModel
from modeling_scegg.cli import main
from modeling_scegg.data.backbone import RegionFeatureExtractor, backbone_id
from modeling_scegg.export import attach_backbone, save_model


def region_model(**overrides) -> SCEGGModel:
    """A tiny SCEGGModel for R = 4 regions of D = 12, the grid of the tiny backbone at 64 px."""
    torch.manual_seed(0)
    model = SCEGGModel(SCEGGConfig(**tiny_config_kwargs(num_regions=4, **overrides)))
    model.set_class_semantics(torch.rand(6, 7), torch.randn(7, 6))
    model.scen.fit_scaler(torch.rand(30, model.config.feature_dim))
    return model.eval()


def images(count: int = 3, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (70 + 9 * i, 90, 3), dtype=np.uint8)) for i in range(count)]


def test_attached_backbone_sees_what_feature_extraction_saw():
    """Pictures through the attached backbone give exactly the logits of the region features the
    training data path extracts from the same pictures with the same weights."""
    resnet, model = tiny_resnet(), region_model()
    image_model = attach_backbone(model, resnet, tiny_image_processor())
    assert isinstance(image_model, SCEGGForImageClassification)
    assert image_model.config.feature_backbone == backbone_id(resnet)
    assert image_model.config.backbone_config.out_features == ["stage4"]
    extracted = RegionFeatureExtractor(resnet, crop_size=TINY_CROP, device="cpu")(images())
    pixels = tiny_image_processor()(images(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        from_pixels = image_model(pixel_values=pixels).logits
        from_features = model(torch.from_numpy(extracted.regions)).logits
    torch.testing.assert_close(from_pixels, from_features)


def test_the_recorded_feature_backbone_is_enforced():
    resnet = tiny_resnet(seed=0)
    model = region_model(feature_backbone=backbone_id(resnet))
    assert attach_backbone(model, resnet, tiny_image_processor()).backbone is not None
    with pytest.raises(ValueError, match="trained on region features of the backbone sha256:.* but .* is sha256:"):
        attach_backbone(model, tiny_resnet(seed=1), tiny_image_processor())


def test_a_backbone_that_does_not_give_the_models_regions_is_refused():
    with pytest.raises(ValueError, match=r"448 x 448 crops does not give the model's regions.*14 x 14 map = 196 regions"):
        attach_backbone(region_model(), tiny_resnet(), SCEGGImageProcessor())
    with pytest.raises(ValueError, match="12 channels, the model reads region features of feature_dim=10"):
        attach_backbone(region_model(feature_dim=10), tiny_resnet(), tiny_image_processor())


def test_saved_folder_runs_the_image_classification_pipeline(tmp_path):
    folder = save_model(attach_backbone(region_model(), tiny_resnet(), tiny_image_processor()), tmp_path / "m",
                        tiny_image_processor())
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "config.json", "configuration_scegg.py", "image_processing_scegg.py", "model.safetensors",
                     "modeling_sc_egg.py", "pipeline_scegg.py", "preprocessor_config.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_scegg.SCEGGConfig", "AutoModel": "modeling_sc_egg.SCEGGModel",
                                  "AutoModelForImageClassification": "modeling_sc_egg.SCEGGForImageClassification"}
    assert config["custom_pipelines"]["image-classification"]["impl"] == "pipeline_scegg.SCEGGImageClassificationPipeline"
    assert config["custom_pipelines"]["zero-shot-image-classification"]["impl"] == \
        "pipeline_scegg.SCEGGZeroShotImageClassificationPipeline"
    assert type(AutoModelForImageClassification.from_pretrained(folder)) is SCEGGForImageClassification
    assert AutoImageProcessor.from_pretrained(folder).crop_size["height"] == TINY_CROP

    classifier = pipeline("image-classification", model=str(folder), trust_remote_code=True)
    picture = images(1)[0]
    gzsl = classifier(picture, top_k=6)
    assert len(gzsl) == 6 and {r["label"] for r in gzsl} == {f"bird_{i}" for i in range(6)}
    assert sum(r["score"] for r in gzsl) == pytest.approx(1.0, abs=1e-5)
    assert [r["score"] for r in gzsl] == sorted((r["score"] for r in gzsl), reverse=True)
    czsl = classifier(picture, top_k=5, czsl=True)
    assert len(czsl) == 2 and {r["label"] for r in czsl} == {"bird_1", "bird_4"}
    model = SCEGGForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = torch.softmax(model(**tiny_image_processor()(picture, return_tensors="pt")).logits[0], -1)
    assert gzsl[0]["label"] == f"bird_{int(expected.argmax())}"
    assert gzsl[0]["score"] == pytest.approx(float(expected.max()), abs=1e-6)
    batched = classifier(images(3), top_k=2, batch_size=2)
    assert [r[0]["label"] for r in batched] == [classifier(p, top_k=1)[0]["label"] for p in images(3)]


def test_scegg_attach_backbone_cli(tmp_path, capsys):
    region_model().save_pretrained(tmp_path / "features_only")
    tiny_resnet().save_pretrained(tmp_path / "resnet")  # a transformers ResNet folder as WEIGHTS
    assert main(["attach-backbone", str(tmp_path / "features_only"), str(tmp_path / "resnet"),
                 "--output", str(tmp_path / "with_backbone"), "--crop_size", str(TINY_CROP)]) == 0
    assert "64 x 64 crops -> 4 regions" in capsys.readouterr().out
    loaded = SCEGGForImageClassification.from_pretrained(tmp_path / "with_backbone")
    assert loaded.config.feature_backbone == backbone_id(tiny_resnet())
    assert main(["attach-backbone", str(tmp_path / "features_only"), str(tmp_path / "resnet"),
                 "--output", str(tmp_path / "x")]) == 2
    assert "does not give the model's regions" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_scegg_add_classes_keeps_the_backbone_and_the_pipeline_ranks_the_new_class(tmp_path, capsys):
    model = region_model()
    model.record_refit_data(torch.rand(40, 12), torch.tensor([0, 2, 3, 5] * 10), num_synthetic=8, epochs=[2, 2], lr=1e-2)
    save_model(attach_backbone(model, tiny_resnet(), tiny_image_processor()), tmp_path / "m", tiny_image_processor())
    header = "class_name," + ",".join(f"a{i}" for i in range(7))
    (tmp_path / "new.csv").write_text(f"{header}\nkiwi,{','.join(['3'] * 7)}\n")
    assert main(["add-classes", str(tmp_path / "m"), str(tmp_path / "new.csv"), "--output", str(tmp_path / "added")]) == 0
    assert "1 new unseen classes 6 kiwi; 7 classes, 3 unseen" in capsys.readouterr().out
    loaded = SCEGGForImageClassification.from_pretrained(tmp_path / "added")
    assert loaded.backbone is not None and loaded.config.feature_backbone == backbone_id(tiny_resnet())
    classifier = pipeline("image-classification", model=str(tmp_path / "added"), trust_remote_code=True)
    assert "kiwi" in {r["label"] for r in classifier(images(1)[0], top_k=7)}
    assert {r["label"] for r in classifier(images(1)[0], czsl=True)} == {"bird_1", "bird_4", "kiwi"}


# -- every way of writing a folder, shared through the Hub stand-in and used without the package ------------
PUSH_EVERY_PATH = r"""
from modeling_scegg import SCEGGForImageClassification
from modeling_scegg.cli import main

# model.push_to_hub: the way most people share a transformers model
model = SCEGGForImageClassification.from_pretrained("with_backbone")
print(model.push_to_hub("alice/push-to-hub"))
# a failed push must leave nothing naming its repo behind for the next one
assert main(["push", "features_only", "not a repo id"]) == 2
for folder, repo in (("features_only", "alice/save-pretrained"), ("with_backbone", "alice/attach-backbone"),
                     ("added", "alice/add-classes")):
    assert main(["push", folder, repo]) == 0, folder
"""

PULL_EVERY_PATH = r"""
import json
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

image = Image.open("bird.jpg")
report = {}
for repo in ("alice/push-to-hub", "alice/save-pretrained", "alice/attach-backbone", "alice/add-classes"):
    entry = {"model": type(AutoModel.from_pretrained(repo, trust_remote_code=True)).__module__,
             "image_model": type(AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True)).__name__,
             "processor": AutoImageProcessor.from_pretrained(repo, trust_remote_code=True).crop_size["height"]}
    classify = pipeline("image-classification", model=repo, trust_remote_code=True)
    rank = pipeline("zero-shot-image-classification", model=repo, trust_remote_code=True)
    entry["pipelines"] = [type(classify).__name__, type(rank).__name__]
    if classify.model.backbone is not None:
        entry["gzsl"] = classify(image, top_k=10)
        labels = [r["label"] for r in entry["gzsl"]][-2:]
        entry["zero_shot"] = rank(image, candidate_labels=labels)
    card = ModelCard.load(repo)
    entry["card"] = {"pipeline_tag": card.data.pipeline_tag, "text": card.text,
                     "metrics": len(card.data.eval_results or [])}
    report[repo] = entry
print(json.dumps(report))
"""

RESULTS = {"dataset": "CUB", "czsl_acc": 50.0, "gzsl_unseen": 40.0, "gzsl_seen": 60.0, "gzsl_h": 48.0,
           "protocol": "fixed schedule", "training_args": {"seed": 0, "data_dir": "/home/me/secret"}}


@pytest.mark.slow
def test_every_path_pushes_a_folder_that_runs_without_the_package(hub_endpoint, tmp_path):
    """save_pretrained + scegg push, model.push_to_hub, attach-backbone and add-classes: each repo
    loads with AutoModel*, AutoImageProcessor and both pipelines in a process that cannot import
    the package; derived folders carry the parent's card and metrics and say what changed."""
    work = tmp_path / "work"
    model = region_model()
    model.record_refit_data(torch.rand(40, 12), torch.tensor([0, 2, 3, 5] * 10), num_synthetic=8, epochs=[2, 2], lr=1e-2)
    save_model(model, work / "features_only", tiny_image_processor(), results=RESULTS)
    tiny_resnet().save_pretrained(work / "resnet")
    assert main(["attach-backbone", str(work / "features_only"), str(work / "resnet"), "--output",
                 str(work / "with_backbone"), "--crop_size", str(TINY_CROP)]) == 0
    header = "class_name," + ",".join(f"a{i}" for i in range(7))
    (work / "new.csv").write_text(f"{header}\nkiwi,{','.join(['3'] * 7)}\n")
    assert main(["add-classes", str(work / "with_backbone"), str(work / "new.csv"), "--output", str(work / "added")]) == 0
    images(1)[0].save(work / "bird.jpg")
    run_client(PUSH_EVERY_PATH, hub_endpoint.endpoint, work, name="push")
    report = json.loads(run_client(PULL_EVERY_PATH, hub_endpoint.endpoint, work, name="pull",
                                   with_package=False).stdout.strip().splitlines()[-1])
    for repo, entry in report.items():
        assert entry["model"].startswith("transformers_modules") and entry["image_model"] == "SCEGGForImageClassification"
        assert entry["processor"] == TINY_CROP, repo
        assert entry["pipelines"] == ["SCEGGImageClassificationPipeline", "SCEGGZeroShotImageClassificationPipeline"]
        assert entry["card"]["pipeline_tag"] == "zero-shot-image-classification"
        assert entry["card"]["metrics"] == 4, f"{repo}: the training run's metrics are carried forward"
        assert f'from_pretrained("{repo}"' in entry["card"]["text"] and "/home/me/secret" not in entry["card"]["text"]
        assert "not a repo id" not in entry["card"]["text"]
    assert "gzsl" not in report["alice/save-pretrained"], "no backbone, no pictures"
    for repo in ("alice/push-to-hub", "alice/attach-backbone", "alice/add-classes"):
        ranked = report[repo]["zero_shot"]
        assert sum(r["score"] for r in ranked) == pytest.approx(1.0, abs=1e-5)
        assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
        assert "Region backbone attached" in report[repo]["card"]["text"]
    assert "the training features did not record their backbone" in report["alice/attach-backbone"]["card"]["text"]
    added = report["alice/add-classes"]
    assert "kiwi" in {r["label"] for r in added["gzsl"]}
    assert "Classes added after training, from their attributes: `kiwi`" in added["card"]["text"]
    assert "Their accuracy is unmeasured" in added["card"]["text"]
