"""modeling_scegg.hub: the model card, safe loading, offline errors, and push / pull round trips
through the local Hub stand-in with the stock clients (the pulling side without the package)."""
import json
import os
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from hub_server import (  # noqa: F401 - fixtures are used by name
    DATASET_VIEWER_HOST,
    HubStandIn,
    hub_endpoint,
    hub_server,
    run_client,
)
from huggingface_hub import ModelCard
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from safetensors.torch import save_file

from modeling_scegg import hub
from modeling_scegg.errors import UserError
from modeling_scegg.hub import (
    HubOfflineError,
    UnsafeWeightsError,
    build_model_card,
    check_safetensors_only,
    dataset_files_to_push,
    explain_offline_error,
    load_model,
    model_files_to_push,
)

RESULTS = {"czsl_acc": 75.123, "gzsl_unseen": 64.1, "gzsl_seen": 73.6, "gzsl_h": 2 * 64.1 * 73.6 / (64.1 + 73.6),
           "chance_czsl": 50.0, "protocol": "fixed schedule"}
METRICS = ("czsl_acc", "gzsl_unseen", "gzsl_seen", "gzsl_h")
TRAINING_ARGS = {"seed": 3, "stage1": {"iterations": 20, "lr": 1e-4}, "stage3": {"epochs": 2}}
EXTRACTOR = "random ResNet-like test backbone"


def _save_model(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    (folder / "results.json").write_text(json.dumps(RESULTS))
    return folder


def _card(folder: Path, repo_id: str | None = "alice/sc-egg-tiny", **overrides) -> ModelCard:
    kwargs = dict(dataset_name="CUB", training_args=TRAINING_ARGS, feature_extractor=EXTRACTOR,
                  protocol="validation", repo_id=repo_id)
    kwargs.update(overrides)
    return build_model_card(folder, kwargs.pop("results", RESULTS), **kwargs)


def _usage_snippet(card_text: str) -> str:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", card_text, flags=re.S) if "AutoModel" in b]
    assert len(blocks) == 1, f"expected one region-feature python block in the card, found {len(blocks)}"
    return blocks[0]


# -- model card -------------------------------------------------------------------------------------
def test_model_card_metadata_round_trips(tiny_model, tmp_path):
    folder = _save_model(tiny_model, tmp_path / "out")
    published = {"label": "test-selected", "czsl_acc": 76.0, "gzsl_unseen": 65.0, "gzsl_seen": 75.0,
                 "gzsl_h": 2 * 65.0 * 75.0 / 140.0, "czsl_epoch": 3, "gzsl_epoch": 4}
    _card(folder, results={**RESULTS, "published_protocol": published})
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "zero-shot-image-classification", "it ranks pictures once given its backbone"
    assert "takes pictures only once given" in card.text and "scegg attach-backbone" in card.text
    assert data.datasets == ["CUB"] and data.base_model is None
    assert data.license == "apache-2.0"
    assert {"custom_code", "zero-shot-learning", "sc-egg", "generalized-zero-shot-learning"} <= set(data.tags)
    assert data.model_name == "sc-egg-tiny"
    metrics = {(r.metric_type, r.dataset_split, r.metric_name): r.metric_value for r in data.eval_results}
    assert len(metrics) == 4, "only the main protocol's four numbers belong in the model-index"
    by_prefix = {name.split(" [")[0]: value for (_, _, name), value in metrics.items()}
    assert by_prefix == {"CZSL Acc (unseen classes)": round(RESULTS["czsl_acc"], 2),
                         "GZSL U (unseen accuracy)": round(RESULTS["gzsl_unseen"], 2),
                         "GZSL S (seen accuracy)": round(RESULTS["gzsl_seen"], 2),
                         "GZSL H (harmonic mean of U and S)": round(RESULTS["gzsl_h"], 2)}
    assert all("[honest, validation selection]" in name for (_, _, name) in metrics)
    assert {(t, s) for (t, s, _) in metrics} == {("accuracy", "test_unseen"), ("accuracy", "test_seen"),
                                                ("harmonic_mean", "test_seen+test_unseen")}
    assert all(r.dataset_name == "CUB" and r.task_type == "zero-shot-image-classification" for r in data.eval_results)
    text = card.text
    config_block = re.search(r"```json\n(.*?)```", text, flags=re.S).group(1)
    assert json.loads(config_block) == TRAINING_ARGS
    assert EXTRACTOR in text and "published protocol (test-selected" in text.lower()
    assert f"| {published['gzsl_h']:.2f} |" in text and f"| {RESULTS['czsl_acc']:.2f} |" in text
    assert "pages     = {956--963}" in text and "IJCAI-22" in text
    assert f"`(batch, {tiny_model.config.num_regions}, {tiny_model.config.feature_dim})`" in text


def test_model_card_of_a_model_with_backbone_names_the_task_it_runs(tiny_image_model, tmp_path):
    folder = _save_model(tiny_image_model, tmp_path / "out")
    card = _card(folder)
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert 'pipeline("image-classification", model="alice/sc-egg-tiny", trust_remote_code=True)' in card.text
    assert 'pipeline("zero-shot-image-classification", model="alice/sc-egg-tiny", trust_remote_code=True)' in card.text
    assert 'candidate_labels=["bird_1", "bird_4"]' in card.text
    assert "czsl=True" in card.text and "carries its ResNet region backbone" in card.text


def test_model_card_labels_test_selected_numbers(tiny_model, tmp_path):
    folder = _save_model(tiny_model, tmp_path / "out")
    card = _card(folder, protocol="published")
    assert all("[published protocol, test-selected]" in r.metric_name for r in card.data.eval_results)
    assert "selection on the test set" in card.text


@pytest.mark.parametrize("change, message", [
    (dict(protocol="best"), "protocol must be one of"),
    (dict(results={**RESULTS, "czsl_acc": 175.1}), "must be a percentage in"),
    (dict(results={**RESULTS, "gzsl_h": RESULTS["gzsl_h"] + 1.0}), "is not the harmonic mean"),
    (dict(results={"czsl_acc": 50.0}), "lacks"),
    (dict(results={**RESULTS, "published_protocol": RESULTS}, protocol="published"), "already use"),
])
def test_model_card_rejects_bad_input(tiny_model, tmp_path, change, message):
    folder = _save_model(tiny_model, tmp_path / "out")
    before = (folder / "README.md").read_text()
    with pytest.raises(ValueError, match=message):
        _card(folder, **change)
    assert (folder / "README.md").read_text() == before, "a failed card must leave the folder's card as it was"


def test_model_card_needs_a_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        _card(tmp_path)


def test_packaged_template_matches_top_level_template():
    assert (REPO_ROOT / "MODEL_CARD.md").read_text() == hub.DEFAULT_TEMPLATE.read_text()


# -- safe loading ---------------------------------------------------------------------------------------
def test_check_safetensors_only(tmp_path):
    assert check_safetensors_only(["config.json", "model.safetensors", "pytorch_model.bin"]) == ["model.safetensors"]
    with pytest.raises(UnsafeWeightsError, match=r"pytorch_model\.bin"):
        check_safetensors_only(["config.json", "pytorch_model.bin"])
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "weights.pth").write_bytes(b"\x80\x04")
    with pytest.raises(UnsafeWeightsError, match=r"weights\.pth"):
        check_safetensors_only(tmp_path)
    (tmp_path / "weights.pth").unlink()
    with pytest.raises(FileNotFoundError, match="no model weights"):
        check_safetensors_only(tmp_path)


def test_push_refuses_pickles_and_incomplete_folders(tiny_model, tmp_path):
    folder = _save_model(tiny_model, tmp_path / "out")
    (folder / "notes.py").write_text("print('a script of my own, not remote code')")
    files = model_files_to_push(folder)
    assert files == ["README.md", "config.json", "configuration_scegg.py", "image_processing_scegg.py",
                     "model.safetensors", "modeling_sc_egg.py", "pipeline_scegg.py", "preprocessor_config.json",
                     "results.json"]
    packaged = REPO_ROOT / "modeling_scegg" / "modeling_scegg.py"
    assert (folder / "modeling_sc_egg.py").read_text() == packaged.read_text()
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="pytorch_model.bin"):
        model_files_to_push(folder)
    (folder / "pytorch_model.bin").unlink()
    (folder / "pipeline_scegg.py").unlink()
    with pytest.raises(UserError, match=r"lacks the remote-code files \['pipeline_scegg.py'\]"):
        model_files_to_push(folder)


def test_offline_cache_miss_is_explained(monkeypatch):
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubOfflineError) as caught:
        load_model("alice/never-downloaded")
    message = str(caught.value)
    assert "hf download alice/never-downloaded --local-dir ./never-downloaded" in message
    assert "HF_HUB_OFFLINE" in message
    assert isinstance(caught.value.__cause__, (OfflineModeIsEnabled, LocalEntryNotFoundError)), "the client's error is the cause"
    assert len(message.splitlines()) == 2, "cause and remedy, one line each"
    with pytest.raises(ConnectionError) as caught:
        datasets.load_dataset("alice/never-downloaded-features", "features")
    advice = str(explain_offline_error(caught.value, "alice/never-downloaded-features", repo_type="dataset"))
    assert "hf download alice/never-downloaded-features --repo-type dataset --local-dir" in advice
    assert 'load_dataset("./never-downloaded-features", "features")' in advice
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    unrelated = KeyError("x")
    assert explain_offline_error(unrelated, "alice/x") is unrelated


# -- feature dataset layout ------------------------------------------------------------------------------
def _feature_dataset_folder(folder: Path, regions: int = 3, dim: int = 4) -> Path:
    """A tiny feature dataset in the Hub layout, built by hand with datasets (the layout the data
    package's writer produces: one config per table, Parquet, README ``configs:``)."""
    rng = np.random.default_rng(0)
    names = ["black_footed_albatross", "laysan_albatross", "sooty_albatross"]
    features = datasets.Features({
        "region_features": datasets.Array2D(shape=(regions, dim), dtype="float16"),
        "label": datasets.ClassLabel(names=names),
    })
    splits = {"train": [0, 0, 1], "test_seen": [0, 1], "test_unseen": [2, 2]}
    for split, labels in splits.items():
        table = datasets.Dataset.from_dict(
            {"region_features": rng.random((len(labels), regions, dim)).astype(np.float16), "label": labels},
            features=features)
        table.to_parquet(str(folder / "features" / f"{split}-00000-of-00001.parquet"))
    datasets.Dataset.from_dict({
        "class_id": [0, 1, 2], "class_name": names,
        "attributes": rng.random((3, 5)).astype(np.float32).tolist(), "is_unseen": [False, False, True],
    }).to_parquet(str(folder / "classes" / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_dict({
        "attribute_name": [f"has_part_{i}" for i in range(5)],
        "word_vector": rng.random((5, 6)).astype(np.float32).tolist(),
    }).to_parquet(str(folder / "attributes" / "train-00000-of-00001.parquet"))
    split_entries = "".join(f"  - split: {s}\n    path: features/{s}-*.parquet\n" for s in splits)
    (folder / "README.md").write_text(
        "---\nlicense: other\nconfigs:\n- config_name: features\n  data_files:\n" + split_entries
        + "- config_name: classes\n  data_files:\n  - split: train\n    path: classes/*.parquet\n"
        + "- config_name: attributes\n  data_files:\n  - split: train\n    path: attributes/*.parquet\n"
        + "---\n\n# Tiny SC-EGG feature dataset\n")
    (folder / "scratch.arrow").write_bytes(b"not shared")
    return folder


def test_dataset_layout_is_checked(tmp_path):
    folder = _feature_dataset_folder(tmp_path / "ds")
    assert dataset_files_to_push(folder) == [
        "README.md", "attributes/train-00000-of-00001.parquet", "classes/train-00000-of-00001.parquet",
        "features/test_seen-00000-of-00001.parquet", "features/test_unseen-00000-of-00001.parquet",
        "features/train-00000-of-00001.parquet"]
    (folder / "attributes" / "train-00000-of-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="attributes"):
        dataset_files_to_push(folder)
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("config_name: classes", "config_name: klasses"))
    with pytest.raises(ValueError, match=r"configs \['classes'\] are missing"):
        dataset_files_to_push(folder)


# -- round trip through the Hub stand-in ----------------------------------------------------------------
PUSH = r"""
import json
import numpy as np
from modeling_scegg.data import SyntheticConfig, load_zsl_dataset
from modeling_scegg.hub import push_feature_dataset, push_model

urls = {"model": push_model("model_out", "alice/sc-egg-tiny"),
        "dataset": push_feature_dataset("feature_ds", "alice/sc-egg-tiny-features")}
sizes = SyntheticConfig(num_classes=6, num_unseen=2, num_val=1, num_attributes=5, num_regions=3, feature_dim=4,
                        word_dim=7, train_images_per_class=2, test_seen_images_per_class=1,
                        test_unseen_images_per_class=2)
original = load_zsl_dataset("synthetic", cache_dir="cache_push", synthetic_config=sizes)
urls["synthetic"] = push_feature_dataset(original, "alice/synthetic-features")
pulled = load_zsl_dataset("alice/synthetic-features", cache_dir="cache_pull")
same = {split: bool(np.array_equal(np.asarray(original.splits[split]["region_features"]),
                                   np.asarray(pulled.splits[split]["region_features"])))
        for split in original.splits}
same["attributes"] = bool(np.array_equal(original.semantics.attributes, pulled.semantics.attributes))
urls["same"] = same
print(json.dumps(urls))
"""

PULL = r"""
import json, re, torch, datasets
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel

tensors = load_file("expected.safetensors")
model = AutoModel.from_pretrained("alice/sc-egg-tiny", trust_remote_code=True).eval()
with torch.no_grad():
    output = model(tensors["region_features"])
card = ModelCard.load("alice/sc-egg-tiny")
snippet = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)[0]
exec(compile(snippet, "card-usage-snippet", "exec"), {})
local_snippet = snippet.replace('"alice/sc-egg-tiny"', repr("local_copy"))
exec(compile(local_snippet, "card-usage-snippet-local", "exec"), {})
features = datasets.load_dataset("alice/sc-egg-tiny-features", "features")
classes = datasets.load_dataset("alice/sc-egg-tiny-features", "classes", split="train")
print(json.dumps({
    "module": type(model).__module__,
    "identical": all(torch.equal(getattr(output, k), tensors[k]) for k in ("logits", "czsl_logits", "dense_features")),
    "metrics": {r.metric_name: r.metric_value for r in card.data.eval_results},
    "tags": card.data.tags,
    "splits": {name: split.num_rows for name, split in features.items()},
    "feature_type": str(features["train"].features["region_features"]),
    "label_names": features["train"].features["label"].names,
    "first_region": features["test_unseen"][0]["region_features"],
    "unseen": list(classes["is_unseen"]),
}))
"""


@pytest.mark.slow
def test_push_and_pull_without_the_package(hub_endpoint: HubStandIn, tiny_model, tmp_path):
    work = tmp_path / "work"
    folder = _save_model(tiny_model, work / "model_out")
    _card(folder, repo_id=None)  # as training writes it: push_model must fill in the repo id
    assert '"ORG/NAME"' in (folder / "README.md").read_text()
    (folder / "checkpoints" / "stage1").mkdir(parents=True)
    (folder / "checkpoints" / "stage1" / "model.safetensors").write_bytes(b"stale")
    (folder / "optimizer.safetensors").write_bytes(b"optimizer state")
    (folder / "train.log").write_text("log")
    tiny_model.save_pretrained(work / "local_copy")
    regions = torch.rand(3, tiny_model.config.num_regions, tiny_model.config.feature_dim,
                         generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = tiny_model(regions)
    save_file({"region_features": regions, "logits": expected.logits, "czsl_logits": expected.czsl_logits,
               "dense_features": expected.dense_features}, str(work / "expected.safetensors"))
    ds_folder = _feature_dataset_folder(work / "feature_ds")

    pushing = run_client(PUSH, hub_endpoint.endpoint, work, name="push", tolerated_hosts=(DATASET_VIEWER_HOST,))
    pushed = json.loads(pushing.stdout.strip().splitlines()[-1])
    assert pushed["model"].startswith(f"{hub_endpoint.endpoint}/alice/sc-egg-tiny/commit/")
    assert pushed["same"] and all(pushed["same"].values()), pushed["same"]
    model_repo = hub_endpoint.repos[("model", "alice/sc-egg-tiny")]
    assert sorted(model_repo.commits[model_repo.branches["main"]].files) == [
        ".gitattributes", "README.md", "config.json", "configuration_scegg.py", "image_processing_scegg.py",
        "model.safetensors", "modeling_sc_egg.py", "pipeline_scegg.py", "preprocessor_config.json", "results.json"]

    pulled = run_client(PULL, hub_endpoint.endpoint, work, name="pull", with_package=False,
                        tolerated_hosts=(DATASET_VIEWER_HOST,))
    report = json.loads(pulled.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules"), report["module"]
    assert report["identical"], "outputs changed between save and AutoModel.from_pretrained from the Hub"
    assert sorted(report["metrics"].values()) == sorted(round(RESULTS[k], 2) for k in METRICS)
    assert "custom_code" in report["tags"]
    assert pulled.stdout.count("GZSL: bird_") == 2, "the card's usage snippet did not run twice"
    assert report["splits"] == {"train": 3, "test_seen": 2, "test_unseen": 2}
    assert "Array2D(shape=(3, 4), dtype='float16'" in report["feature_type"]
    assert report["label_names"] == ["black_footed_albatross", "laysan_albatross", "sooty_albatross"]
    local_table = datasets.Dataset.from_parquet(str(ds_folder / "features" / "test_unseen-00000-of-00001.parquet"))
    assert report["first_region"] == local_table[0]["region_features"]
    assert report["unseen"] == [False, False, True]
    dataset_repo = hub_endpoint.repos[("dataset", "alice/sc-egg-tiny-features")]
    files = dataset_repo.commits[dataset_repo.branches["main"]].files
    assert "scratch.arrow" not in files and all(files[n].is_lfs for n in files if n.endswith(".parquet"))


def test_offline_advice_download_command_works(hub_endpoint: HubStandIn, tiny_model, tmp_path):
    """Follow the advice of the offline error literally: the printed `hf download` command
    fetches the repo, and the folder then loads offline."""
    folder = _save_model(tiny_model, tmp_path / "model_out")
    _card(folder, repo_id="alice/advice")
    hub_endpoint.add_files("model", "alice/advice",
                           {name: (folder / name).read_bytes() for name in model_files_to_push(folder)})
    advice = str(explain_offline_error(OfflineModeIsEnabled("offline"), "alice/advice"))
    command = re.search(r"`(hf download [^`]*)`", advice).group(1).split()
    code = f"import sys\nfrom huggingface_hub.cli.hf import main\nsys.argv = {command!r}\nmain()\n"
    run_client(code, hub_endpoint.endpoint, tmp_path, name="advice")
    loaded = load_model(tmp_path / "advice")
    regions = torch.rand(2, tiny_model.config.num_regions, tiny_model.config.feature_dim)
    with torch.no_grad():
        assert torch.equal(loaded(regions).logits, tiny_model(regions).logits)


# -- cards that say what happened ------------------------------------------------------------------------------
@pytest.mark.parametrize("selection, label", [
    (None, "honest, fixed schedule]"),
    ({"calibration": {"seen_score_offset": 0.3}}, "honest, fixed schedule, calibration on validation]"),
    ({"gzsl_epochs": 3, "czsl_epochs": 2, "calibration": {"seen_score_offset": 0.3}}, "honest, validation selection]"),
])
def test_card_protocol_is_the_one_the_run_used(tiny_model, tmp_path, selection, label):
    """A default run (only the calibration offset chosen on validation) is not said to have
    selected epochs there; the run's own account of its protocol is quoted."""
    folder = tmp_path / "out"
    tiny_model.save_pretrained(folder)
    record = {**RESULTS, "dataset": "CUB", "protocol": "the run's own words",
              "training_args": {"seed": 1, "data_dir": "/home/me/data"}, **({"selection": selection} if selection else {})}
    (folder / "results.json").write_text(json.dumps(record))
    card = hub.write_model_card(folder)
    assert all(r.metric_name.endswith(f"[{label}") for r in card.data.eval_results)
    assert "As the run recorded it: the run's own words." in card.text
    assert "/home/me/data" not in card.text and '"seed": 1' in card.text
    if selection is None or "gzsl_epochs" not in selection:
        assert "epochs were selected" not in card.text.lower()


def test_card_of_an_unmeasured_model_reports_no_metrics(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "fresh")
    card = ModelCard.load(tmp_path / "fresh" / "README.md")
    assert card.data.eval_results is None and "No metrics" in card.text
    assert card.data.pipeline_tag == "zero-shot-image-classification" and card.data.license == "apache-2.0"


def test_base_model_is_the_backbones_hub_id(tiny_image_model, tmp_path):
    tiny_image_model.config.backbone_config._name_or_path = "microsoft/resnet-101"
    tiny_image_model.save_pretrained(tmp_path / "m")
    assert ModelCard.load(tmp_path / "m" / "README.md").data.base_model == "microsoft/resnet-101"
    assert hub.backbone_hub_id({"backbone_config": {"_name_or_path": "/home/me/resnet"}}) is None
    assert hub.backbone_hub_id({"backbone_name": "timm/resnet101.a1h_in1k"}) == "timm/resnet101.a1h_in1k"


def test_a_failed_push_leaves_no_card_naming_its_repo(tiny_model, tmp_path, monkeypatch):
    """The card is written for the repo in a staging copy: a push that fails changes nothing, and
    the next push to another repo publishes a card naming that repo only."""
    folder = tmp_path / "out"
    tiny_model.save_pretrained(folder)
    (folder / "results.json").write_text(json.dumps({**RESULTS, "training_args": {"seed": 1, "data_dir": "/home/me"}}))
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    uploaded = []

    def create_repo(self, repo_id, **kwargs):
        if repo_id == "alice/failed":
            raise ConnectionError("the Hub went away")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.append((repo_id, (Path(folder_path) / "README.md").read_text(), sorted(os.listdir(folder_path))))
        record = json.loads((Path(folder_path) / "results.json").read_text())
        assert record["training_args"] == {"seed": 1}, "paths of the training machine stay local"
        return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    with pytest.raises(ConnectionError):
        hub.push_model(folder, "alice/failed")
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert hub.push_model(folder, "alice/ok") == "https://hub/alice/ok/commit/1"
    repo, card, files = uploaded[0]
    assert repo == "alice/ok" and '"alice/ok"' in card and "alice/failed" not in card
    assert files == hub.model_files_to_push(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".push-")]


def test_a_local_path_is_never_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    for name in ("./outz", "outz", str(tmp_path / "outz"), "../a/b", "a/b/c"):
        with pytest.raises(UserError, match="no such model folder") as caught:
            hub.local_model_folder(name)
        assert "hf download" not in str(caught.value)
    assert hub.is_hub_id("alice/sc-egg") and not hub.is_hub_id("./alice") and not hub.is_hub_id(str(tmp_path))
