"""The image-classification pipeline of a pushed SC-EGG checkpoint, in a fresh process where the
package cannot be imported, from the local Hub stand-in: GZSL over every class, CZSL over the
unseen ones, the same scores as in this process, and the model card's snippet runs as written."""
import json
import re

import numpy as np
import pytest
import torch
from conftest import tiny_image_processor, tiny_resnet
from hub_server import HubStandIn, hub_endpoint, hub_server, run_client  # noqa: F401 - fixtures are used by name
from PIL import Image
from test_export import region_model
from transformers import pipeline

from modeling_scegg.export import attach_backbone, save_model
from modeling_scegg.hub import build_model_card, model_files_to_push

REPO = "alice/sc-egg-pictures"
RESULTS = {"czsl_acc": 50.0, "gzsl_unseen": 40.0, "gzsl_seen": 60.0, "gzsl_h": 48.0}

PULL = r"""
import json, re
from huggingface_hub import ModelCard
from PIL import Image
from transformers import pipeline

classifier = pipeline("image-classification", model="alice/sc-egg-pictures", trust_remote_code=True)
image = Image.open("bird.jpg")
card = ModelCard.load("alice/sc-egg-pictures")
snippet = next(b for b in re.findall(r"```python\n(.*?)```", card.text, flags=re.S) if "pipeline(" in b)
exec(compile(snippet, "card-pipeline-snippet", "exec"), {})
print(json.dumps({
    "gzsl": classifier(image, top_k=6),
    "czsl": classifier(image, top_k=5, czsl=True),
    "modules": [type(classifier).__module__, type(classifier.model).__module__,
                type(classifier.image_processor).__module__],
    "pipeline_tag": card.data.pipeline_tag,
}))
"""


@pytest.mark.slow
def test_pipeline_from_the_hub_without_the_package(hub_endpoint: HubStandIn, tmp_path):
    folder = save_model(attach_backbone(region_model(), tiny_resnet(), tiny_image_processor()), tmp_path / "model",
                        tiny_image_processor())
    (folder / "results.json").write_text(json.dumps(RESULTS))
    build_model_card(folder, RESULTS, dataset_name="CUB", training_args={}, feature_extractor="tiny random ResNet",
                     protocol="fixed", repo_id=REPO)
    hub_endpoint.add_files("model", REPO, {name: (folder / name).read_bytes() for name in model_files_to_push(folder)})
    work = tmp_path / "work"
    work.mkdir()
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (75, 100, 3), dtype=np.uint8)).save(work / "bird.jpg", quality=95)

    pulled = run_client(PULL, hub_endpoint.endpoint, work, name="pipeline", with_package=False)
    report = json.loads(pulled.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules") for module in report["modules"]), report["modules"]
    assert report["pipeline_tag"] == "zero-shot-image-classification"
    # the snippet prints top_k=5 over all 6 classes, then the 2 unseen classes (top_k capped)
    assert pulled.stdout.count("'label': 'bird_") == 5 + 2, "the card's pipeline snippet did not print its rankings"
    local = pipeline("image-classification", model=str(folder), trust_remote_code=True)
    image = Image.open(work / "bird.jpg")
    for remote, here in ((report["gzsl"], local(image, top_k=6)), (report["czsl"], local(image, top_k=5, czsl=True))):
        assert [r["label"] for r in remote] == [r["label"] for r in here]
        np.testing.assert_allclose([r["score"] for r in remote], [r["score"] for r in here], atol=1e-6)
    assert {r["label"] for r in report["czsl"]} == {"bird_1", "bird_4"}
    assert len(report["gzsl"]) == 6
    assert not re.search(r"not supported for image-classification", pulled.stderr)


def test_zero_shot_pipeline_ranks_among_the_candidate_labels(tmp_path):
    """As CLIP's pipeline: the named classes only, best first, scores a softmax over them (sum 1),
    equal to the GZSL logits restricted to the candidates."""
    import torch

    from modeling_scegg import SCEGGForImageClassification

    folder = save_model(attach_backbone(region_model(), tiny_resnet(), tiny_image_processor()), tmp_path / "m",
                        tiny_image_processor())
    ranker = pipeline("zero-shot-image-classification", model=str(folder), trust_remote_code=True)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (80, 90, 3), dtype=np.uint8))
    candidates = ["bird_4", "bird_0", "bird_2"]
    ranked = ranker(image, candidate_labels=candidates)
    assert sorted(r["label"] for r in ranked) == sorted(candidates)
    assert sum(r["score"] for r in ranked) == pytest.approx(1.0, abs=1e-6)
    model = SCEGGForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**tiny_image_processor()(image, return_tensors="pt")).logits[0]
    expected = torch.softmax(logits[[4, 0, 2]], -1)
    by_label = {r["label"]: r["score"] for r in ranked}
    np.testing.assert_allclose([by_label[c] for c in candidates], expected.numpy(), atol=1e-6)
    assert [r["score"] for r in ranked] == sorted(by_label.values(), reverse=True)
    assert len(ranker([image, image], candidate_labels=["bird_1"])) == 2


def test_zero_shot_pipeline_says_how_to_add_an_unknown_class(tmp_path):
    folder = save_model(attach_backbone(region_model(), tiny_resnet(), tiny_image_processor()), tmp_path / "m",
                        tiny_image_processor())
    ranker = pipeline("zero-shot-image-classification", model=str(folder), trust_remote_code=True)
    image = Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\['kiwi'\] is not a class of this model.*scegg add-classes.*add_classes"):
        ranker(image, candidate_labels=["bird_1", "kiwi"])
    with pytest.raises(ValueError, match="candidate_labels is required"):
        ranker(image)


@pytest.fixture(scope="module")
def pipe_and_folder(tmp_path_factory):
    folder = save_model(attach_backbone(region_model(), tiny_resnet(), tiny_image_processor()),
                        tmp_path_factory.mktemp("model"), tiny_image_processor())
    return pipeline("image-classification", model=str(folder), trust_remote_code=True), folder


def test_one_rotated_jpeg_gives_the_backbone_the_same_pixels_on_every_path(pipe_and_folder, tmp_path):
    """One reader for every path: scegg predict, image-folder extraction and the pipeline (path, PIL image, bytes
    as base64) read the EXIF-rotated picture upright, into identical pixel_values."""
    import base64

    from test_image_processing_scegg import rotated_jpeg

    from modeling_scegg.data.backbone import ImagePreprocessor
    from modeling_scegg.data.images import _ImageFiles
    from modeling_scegg.prediction import read_picture

    pipe, _ = pipe_and_folder
    path = rotated_jpeg(tmp_path / "rotated.jpg", size=(150, 100))
    processor = tiny_image_processor()
    paths = {
        "predict": read_picture(path, processor),
        "extraction": _ImageFiles(tmp_path, [path.name], ImagePreprocessor(processor.crop_size.height))[0],
        "pipeline (path)": pipe.preprocess(str(path))["pixel_values"][0],
        "pipeline (PIL image)": pipe.preprocess(Image.open(path))["pixel_values"][0],
        "pipeline (base64)": pipe.preprocess(base64.b64encode(path.read_bytes()).decode())["pixel_values"][0],
    }
    upright = processor(Image.open(path).convert("RGB").transpose(Image.Transpose.ROTATE_270),
                        return_tensors="pt")["pixel_values"][0]
    sideways = processor(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    assert not torch.equal(upright, sideways)
    for name, pixels in paths.items():
        assert torch.equal(pixels, upright), name


@pytest.mark.parametrize("size", [(1, 1), (31, 31)])
def test_the_pipeline_refuses_what_predict_refuses(pipe_and_folder, tmp_path, size):
    from modeling_scegg.image_processing_scegg import UnusableImage

    pipe, _ = pipe_and_folder
    Image.new("RGB", size, (200, 10, 10)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=f"too small: {size[0]} x {size[1]}") as refused:
        pipe(str(tmp_path / "small.png"))
    assert type(refused.value).__name__ == UnusableImage.__name__


# -- attribute evidence ---------------------------------------------------------------------------
NAMES = [f"has_{part}" for part in ("bill", "crest", "wing", "tail", "eye", "leg", "belly")]


@pytest.fixture(scope="module")
def explaining_folder(tmp_path_factory):
    """A tiny pictures model with attribute names and a trained-looking (non-zero) attention."""
    import torch

    model = region_model(attribute_names=NAMES)
    with torch.no_grad():
        model.scen.local_embedding.attention_weight.normal_(generator=torch.Generator().manual_seed(3))
    image_model = attach_backbone(model, tiny_resnet(), tiny_image_processor())
    return save_model(image_model, tmp_path_factory.mktemp("explain") / "model", tiny_image_processor())


def _picture(seed: int = 7) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (75, 100, 3), dtype=np.uint8))


def test_return_attributes_explains_without_changing_the_ranking(explaining_folder):
    """The folder's remote-code pipeline: K seen attributes by e_l, the same classes and scores as
    without the argument, and per class contributions that add up to its centred LEN score."""
    import torch

    from modeling_scegg.modeling_scegg import SCEGGForImageClassification

    classifier = pipeline("image-classification", model=str(explaining_folder), trust_remote_code=True)
    plain = classifier(_picture(), top_k=6)
    explained = classifier(_picture(), top_k=6, return_attributes=7)
    assert set(explained) == {"predictions", "attributes"}
    assert [(p["label"], p["score"]) for p in explained["predictions"]] == [(p["label"], p["score"]) for p in plain]
    model = SCEGGForImageClassification.from_pretrained(explaining_folder).eval()
    pixels = tiny_image_processor()(_picture(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels, output_attribute_scores=True)
    seen = [a["score"] for a in explained["attributes"]]
    assert seen == sorted(seen, reverse=True) and len(seen) == 7
    np.testing.assert_allclose(sorted(seen), sorted(out.attribute_scores[0].tolist()), rtol=1e-5)
    centred = out.local_scores[0] - out.local_scores[0].mean()
    class_id = {name: int(i) for i, name in model.config.id2label.items()}
    for prediction in explained["predictions"]:
        support, contra = prediction["supporting"], prediction["contradicting"]
        assert all(e["contribution"] > 0 for e in support) and all(e["contribution"] < 0 for e in contra)
        assert [e["contribution"] for e in support] == sorted((e["contribution"] for e in support), reverse=True)
        total = sum(e["contribution"] for e in support + contra)
        assert total == pytest.approx(float(centred[class_id[prediction["label"]]]), abs=1e-5)
        assert {e["attribute"] for e in support + contra} <= set(NAMES)


def test_the_zero_shot_pipeline_explains_among_its_candidates(explaining_folder):
    """return_attributes=K on zero-shot-image-classification: the same ranking as without it, and
    contributions centred on the candidates (they add up to p_l minus the candidates' mean p_l)."""
    import torch

    from modeling_scegg.modeling_scegg import SCEGGForImageClassification

    ranker = pipeline("zero-shot-image-classification", model=str(explaining_folder), trust_remote_code=True)
    model = SCEGGForImageClassification.from_pretrained(explaining_folder).eval()
    candidates = [model.config.id2label[i] for i in (4, 0, 2)]
    plain = ranker(_picture(), candidate_labels=candidates)
    explained = ranker(_picture(), candidate_labels=candidates, return_attributes=7)  # all 7: every contribution listed
    assert [(p["label"], p["score"]) for p in explained["predictions"]] == [(p["label"], p["score"]) for p in plain]
    assert len(explained["attributes"]) == 7
    pixels = tiny_image_processor()(_picture(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        local = model(pixel_values=pixels, output_attribute_scores=True).local_scores[0]
    centred = local[[4, 0, 2]] - local[[4, 0, 2]].mean()
    by_label = {p["label"]: p for p in explained["predictions"]}
    for name, expected in zip(candidates, centred.tolist()):
        entries = by_label[name]["supporting"] + by_label[name]["contradicting"]
        assert sum(e["contribution"] for e in entries) == pytest.approx(expected, abs=1e-5)


def test_attention_maps_are_overlays_of_the_chosen_attributes(explaining_folder):
    classifier = pipeline("image-classification", model=str(explaining_folder), trust_remote_code=True)
    top = classifier([_picture(1), _picture(2)], top_k=2, czsl=True, return_attributes=2, attention_maps=True)
    assert len(top) == 2 and list(top[1]["attention_maps"]) == [a["attribute"] for a in top[1]["attributes"]]
    assert {p["label"] for p in top[0]["predictions"]} == {"bird_1", "bird_4"}
    chosen = classifier(_picture(), return_attributes=1, attention_maps=["has_tail", "has_eye"])["attention_maps"]
    assert list(chosen) == ["has_tail", "has_eye"]
    assert all(image.size == (64, 64) and image.mode == "RGB" for image in chosen.values())
    with pytest.raises(ValueError, match="has_fins"):
        classifier(_picture(), return_attributes=1, attention_maps=["has_fins"])
    with pytest.raises(ValueError, match="return_attributes"):
        classifier(_picture(), attention_maps=True)


def test_overlay_is_red_where_the_attribute_looks():
    import torch

    from modeling_scegg.pipeline_scegg import attention_overlay, region_grid

    assert region_grid(196, 448, 448) == (14, 14) and region_grid(6, 300, 200) == (2, 3)
    with pytest.raises(ValueError, match="grid"):
        region_grid(7, 64, 64)
    grey = Image.new("RGB", (40, 40), (128, 128, 128))
    overlay = np.asarray(attention_overlay(grey, torch.tensor([0.1, 0.1, 0.1, 0.7])), dtype=int)
    assert overlay[35, 35, 0] - overlay[35, 35, 2] > 50  # the bottom-right region: red
    assert overlay[4, 4, 2] - overlay[4, 4, 0] > 50      # the others: blue


def test_picture_from_pixels_undoes_the_processor():
    from modeling_scegg.pipeline_scegg import picture_from_pixels

    processor = tiny_image_processor()
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    pixels = processor(picture, return_tensors="pt")["pixel_values"][0]
    np.testing.assert_allclose(np.asarray(picture_from_pixels(pixels, processor), dtype=int),
                               np.asarray(picture, dtype=int), atol=1)
