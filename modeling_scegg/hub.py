"""Sharing SC-EGG on the Hugging Face Hub: the model card, pushing models and feature datasets,
and loading that refuses pickled weights and explains offline failures.

Everything goes through the stock clients (``huggingface_hub``, ``datasets``, ``transformers``);
this module only decides WHAT is shared: an explicit list of files (never checkpoints, optimizer
states or pickles), a card whose model-index carries CZSL Acc and GZSL U / S / H with the
evaluation protocol named, and a dataset layout that ``datasets.load_dataset`` reads without
loading scripts.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from huggingface_hub import (
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    snapshot_download,
)
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from huggingface_hub.repocard import metadata_load
from transformers.dynamic_module_utils import get_relative_import_files

from .atomic import atomic_write_text
from .data.backbone import HUB_ID, is_hub_id
from .data.hub_layout import REQUIRED_COLUMNS, save_zsl_dataset_to_hub_layout
from .errors import UserError
from .image_processing_scegg import SCEGGImageProcessor
from .modeling_scegg import SCEGGForImageClassification, SCEGGModel

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_TEMPLATE = PACKAGE_DIR / "templates" / "MODEL_CARD.md"
# Formats that unpickle on load (torch.load, pickle, Lightning ckpt): never shared, never loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# besides these, a push carries the remote-code files the configs name and what those import
SAFE_MODEL_PATTERNS = ("config.json", "model*.safetensors", "model.safetensors.index.json",
                       "preprocessor_config.json", "README.md", "results.json")
# a Hub repo id: ORG/NAME; anything else (./outz, outz, /data/run, a/b/c) is a local path
# what every card metadata names as the task: the model ranks pictures among its classes, or will
# once given the backbone its region features came from (the card says which)
PIPELINE_TAG = "zero-shot-image-classification"
# training arguments that are paths on the training machine: kept out of public cards
LOCAL_TRAINING_ARGS = ("data_dir", "cache_dir", "output_dir", "config", "class_attributes_file", "image_backbone",
                       "hub_token")

RESULT_KEYS = {
    # key in results.json (percent): (setting, metric shown, metric_type, split)
    "czsl_acc": ("CZSL", "Acc (unseen classes)", "accuracy", "test_unseen"),
    "gzsl_unseen": ("GZSL", "U (unseen accuracy)", "accuracy", "test_unseen"),
    "gzsl_seen": ("GZSL", "S (seen accuracy)", "accuracy", "test_seen"),
    "gzsl_h": ("GZSL", "H (harmonic mean of U and S)", "harmonic_mean", "test_seen+test_unseen"),
}
REPO_PLACEHOLDER = "ORG/NAME"  # the usage snippet's repo id until push_model knows the real one
H_TOLERANCE = 0.1  # percentage points between a reported H and 2 U S / (U + S)
PROTOCOLS = {
    "fixed": ("honest, fixed schedule",
              "Every stage ran a fixed number of iterations/epochs and the last one was kept; nothing was "
              "selected on the test set."),
    "calibration": ("honest, fixed schedule, calibration on validation",
                    "Every stage ran a fixed number of iterations/epochs and the last one was kept; only the "
                    "calibrated-stacking seen-score offset was chosen, on a validation split (val classes as "
                    "pseudo-unseen); nothing was selected on the test set."),
    "validation": ("honest, validation selection",
                   "Classifier epochs (and with them the calibration offset, where calibrated) were selected on "
                   "a validation split of the seen classes (xlsa17 train_loc / val_loc, val classes as "
                   "pseudo-unseen); nothing was selected on the test set."),
    "published": ("published protocol, test-selected",
                  "As in the authors' code, the best epoch was chosen by TEST accuracy. This is selection "
                  "on the test set: the numbers are optimistic and not comparable with honest results."),
}
CARD_TAGS = ["sc-egg", "zero-shot-learning", "generalized-zero-shot-learning", "zero-shot-image-classification",
             "custom_code", "pytorch", "transformers"]


class UnsafeWeightsError(ValueError):
    """Raised where only pickle-based weights exist: loading them would execute arbitrary code."""


class HubOfflineError(UserError, OSError):
    """Raised instead of a client's offline / cache-miss error, saying what to download and how."""


def backbone_hub_id(config: Mapping[str, Any]) -> str | None:
    """The Hub id of the model's region backbone, when it has one (the card's ``base_model``): a
    config field naming it, or the id the embedded ResNet was loaded from."""
    backbone = config.get("backbone_config") or {}
    for name in (config.get("feature_backbone_name"), config.get("backbone_name"), backbone.get("_name_or_path")):
        if isinstance(name, str) and HUB_ID.match(name):
            return name
    return None


def run_protocol(results: Mapping[str, Any]) -> str:
    """The key of ``PROTOCOLS`` that says how a training run chose what it reports, read from
    what it ran (results.json's ``selection``), not from the flags it was given."""
    selection = results.get("selection") or {}
    if "gzsl_epochs" in selection or selection.get("stage3_epochs_scored"):
        return "validation"
    if "calibration" in selection:
        return "calibration"
    return "fixed"


# ----------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------
def _card_results(results: Mapping[str, Any] | None, protocol: str) -> tuple[dict | None, dict | None]:
    """The honest main numbers (None for a model no run measured) and, when given, the
    test-selected ones the card text shows beside them; refusing a card whose main numbers are
    already test-selected and carry another set."""
    if results is None:
        return None, None
    main = _result_values(results, "results")
    if results.get("published_protocol") is None:
        return main, None
    if protocol == "published":
        raise ValueError("results: the main numbers already use protocol='published'; "
                         "drop results['published_protocol'] or pass an honest protocol")
    return main, _result_values(results["published_protocol"], "results['published_protocol']")


def _card_template(base_template: str | os.PathLike | None) -> Path:
    template = Path(base_template) if base_template is not None else DEFAULT_TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(f"model card template not found: {template}")
    return template


def build_model_card(
    output_dir: str | os.PathLike,
    results: Mapping[str, Any] | None,
    *,
    dataset_name: str | None,
    training_args: Mapping[str, Any],
    feature_extractor: str,
    protocol: str,
    repo_id: str | None = None,
    base_template: str | os.PathLike | None = None,
    changes: list[Mapping[str, Any]] = (),
    protocol_as_run: str | None = None,
) -> ModelCard:
    """Write ``output_dir/README.md`` from the card template and return the ``ModelCard``.

    ``results`` is what training writes to results.json: the four numbers in percent under
    ``RESULT_KEYS``, optionally with a ``"published_protocol"`` mapping of the same keys for the
    test-selected numbers, which only the card text shows, labelled; None for a model no training
    run measured (no model-index). ``protocol`` names how the main numbers were selected (one of
    ``PROTOCOLS``), ``protocol_as_run`` is the run's own account of it (results.json's
    ``protocol``). ``changes`` lists what was done to the model after the run measured it
    (backbone attached, classes added). The sizes come from ``output_dir/config.json``. Without
    ``repo_id`` the snippets name ``REPO_PLACEHOLDER``, which ``push_model`` replaces with the repo
    it pushes to.
    """
    folder = Path(output_dir)
    config = _read_config(folder)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    main, published = _card_results(results, protocol)
    dataset_slug = (dataset_name or "model").split("/")[-1].lower()
    model_name = repo_id.split("/")[-1] if repo_id else f"sc-egg-{dataset_slug}"
    protocol_label, protocol_description = PROTOCOLS[protocol]
    card = ModelCard.from_template(
        _card_data(model_name, main, dataset_name, protocol_label, config),
        template_path=str(_card_template(base_template)),
        model_name=model_name,
        repo_id=repo_id or REPO_PLACEHOLDER,
        dataset_name=dataset_name or "its training data",
        feature_extractor=feature_extractor,
        protocol_label=protocol_label,
        protocol_description=protocol_description,
        protocol_as_run=protocol_as_run,
        result_rows=_table_rows(main) if main else [],
        published_rows=_table_rows(published) if published is not None else [],
        training_config=json.dumps(dict(training_args), indent=2, sort_keys=True, default=str),
        changes=[_describe_change(change) for change in changes],
        **_card_sizes(config),
    )
    atomic_write_text(folder / "README.md", str(card))
    return card


def _card_data(model_name: str, main: dict | None, dataset_name: str | None, protocol_label: str,
               config: dict) -> ModelCardData:
    """The card's metadata: the task, licence, datasets, base model and the model-index."""
    return ModelCardData(
        model_name=model_name,
        # Only the main numbers enter the machine-read model-index: a leaderboard reading it must
        # not pick up test-selected numbers shown beside honest ones in the text.
        eval_results=_eval_results(main, dataset_name or "unknown", protocol_label) if main else None,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        license="apache-2.0",
        tags=CARD_TAGS,
        metrics=["accuracy"] if main else None,
        datasets=[dataset_name] if _is_public_dataset(dataset_name) else None,
        base_model=backbone_hub_id(config),
    )


def write_model_card(output_dir: str | os.PathLike, repo_id: str | None = None) -> ModelCard:
    """The card of a model folder from what it holds: ``config.json`` and, when a training run
    measured the model, its ``results.json`` (metrics, protocol as run, arguments, and the changes
    made since)."""
    folder = Path(output_dir)
    path = folder / "results.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    measured = all(key in record for key in RESULT_KEYS)
    training_args = public_record(record).get("training_args") or {}
    if "preset_choice" in record:  # chosen on the validation view: the card names it with every candidate's scores
        training_args = {**training_args, "preset_choice": record["preset_choice"]}
    return build_model_card(
        folder, record if measured else None, dataset_name=record.get("dataset"), training_args=training_args,
        feature_extractor=record.get("feature_extractor", "the backbone named in config.json, if any"),
        protocol=run_protocol(record), repo_id=repo_id, changes=record.get("changes", []),
        protocol_as_run=record.get("protocol") if measured else None)


def _is_public_dataset(name: str | None) -> bool:
    """Dataset names the card metadata may carry: benchmark names and Hub ids, not the built-in
    synthetic data or a path on the training machine."""
    return bool(name) and name != "synthetic" and not os.path.isabs(name) and not name.startswith(".") \
        and name.count("/") <= 1


def _describe_change(change: Mapping[str, Any]) -> str:
    """One line of the card's "Changes since training" list."""
    kind = change.get("change")
    if kind == "backbone attached":
        hub = f", from {change['base_model']}" if change.get("base_model") else ""
        same = ("the metrics above were measured on region features of this same backbone"
                if change.get("same_as_training_features") else
                "the training features did not record their backbone, so the metrics above hold on pictures only "
                "if these are the weights that computed them")
        return f"Region backbone attached ({change.get('feature_backbone')}{hub}): the model now reads pictures; {same}."
    if kind == "classes added":
        names = ", ".join(f"`{name}`" for name in change.get("classes", []))
        return (f"Classes added after training, from their attributes: {names}. Their accuracy is unmeasured; the "
                "final classifiers were refit, so the metrics above describe the model before this change.")
    return json.dumps(dict(change), sort_keys=True, default=str)


def _card_sizes(config: dict) -> dict[str, Any]:
    """The model's sizes, as the card template names them, read from its config.json."""
    names = config.get("id2label") or {}
    unseen = [names.get(str(i), str(i)) for i in config["unseen_class_ids"]]
    return {"num_classes": config["num_classes"], "num_seen": len(config["seen_class_ids"]),
            "num_unseen": len(config["unseen_class_ids"]), "num_attributes": config["num_attributes"],
            "num_regions": config["num_regions"], "feature_dim": config["feature_dim"],
            "runs_on_images": bool(config.get("backbone_config")), "example_labels": unseen[:2] or list(names.values())[:2]}


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: save the model with save_pretrained() before building its card")
    config = json.loads(path.read_text(encoding="utf-8"))
    needed = ("num_classes", "seen_class_ids", "unseen_class_ids", "num_attributes", "num_regions", "feature_dim")
    missing = [key for key in needed if key not in config]
    if missing:
        raise ValueError(
            f"{path} lacks {missing}: it is not an SC-EGG config (model_type {config.get('model_type')!r})"
        )
    return config


def _result_values(results: Mapping[str, Any], where: str) -> dict[str, float]:
    """The four metrics (percent), checked: present, in [0, 100], and H consistent with U and S,
    which catches numbers copied from different runs or epochs into one card."""
    missing = [key for key in RESULT_KEYS if key not in results]
    if missing:
        raise ValueError(f"{where} lacks {missing}; expected percentages under {list(RESULT_KEYS)}")
    values = {}
    for key in RESULT_KEYS:
        value = results[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0.0 <= value <= 100.0:
            raise ValueError(f"{where}[{key!r}] must be a percentage in [0, 100], got {value!r}")
        values[key] = float(value)
    unseen, seen = values["gzsl_unseen"], values["gzsl_seen"]
    expected_h = 2 * unseen * seen / (unseen + seen) if unseen + seen > 0 else 0.0
    if abs(values["gzsl_h"] - expected_h) > H_TOLERANCE:
        raise ValueError(f"{where}: gzsl_h {values['gzsl_h']:.3f} is not the harmonic mean of gzsl_unseen "
                         f"{unseen:.3f} and gzsl_seen {seen:.3f} (expected {expected_h:.3f})")
    return {key: round(value, 2) for key, value in values.items()}


def _eval_results(values: dict[str, float], dataset_name: str, protocol_label: str) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="zero-shot-image-classification",
            task_name="Zero-shot image classification (CZSL and GZSL)",
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            dataset_split=RESULT_KEYS[key][3],
            metric_type=RESULT_KEYS[key][2],
            metric_name=f"{RESULT_KEYS[key][0]} {RESULT_KEYS[key][1]} [{protocol_label}]",
            metric_value=value,
        )
        for key, value in values.items()
    ]


def _table_rows(values: dict[str, float]) -> list[dict[str, Any]]:
    return [
        {"setting": RESULT_KEYS[key][0], "metric": RESULT_KEYS[key][1], "split": RESULT_KEYS[key][3], "value": value}
        for key, value in values.items()
    ]


# ----------------------------------------------------------------------------------------------
# Safe loading
# ----------------------------------------------------------------------------------------------
def check_safetensors_only(folder_or_repo_files: str | os.PathLike | Iterable[str]) -> list[str]:
    """Return the safetensors weight files of a folder (or of a repo's file list); raise
    ``UnsafeWeightsError`` when the weights exist only in a pickle-based format, which
    ``torch.load`` would have to unpickle, i.e. run code from the file."""
    if isinstance(folder_or_repo_files, (str, os.PathLike)):
        folder = Path(folder_or_repo_files)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder not found: {folder}")
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        where = str(folder)
    else:
        names = sorted(folder_or_repo_files)
        where = "the repository"
    top_level = [name for name in names if "/" not in name]
    safe = [name for name in top_level if name.endswith(".safetensors")]
    pickled = [name for name in top_level if name.endswith(PICKLE_SUFFIXES)]
    if safe:
        return safe
    if pickled:
        raise UnsafeWeightsError(
            f"{where} holds weights only in pickle-based formats {pickled}; loading them would run code "
            "from the file. Ask for a safetensors export, or convert a file you trust yourself "
            "(load with torch.load(..., weights_only=True), then save_pretrained())."
        )
    raise FileNotFoundError(f"{where} holds no model weights (*.safetensors); files: {names[:10]}")


def local_model_folder(name_or_path: str | os.PathLike, *, revision: str | None = None, token: str | None = None) -> Path:
    """The folder of a checkpoint: itself when local, else its cached Hub snapshot. Only config,
    safetensors, the image processor's config and the card are ever downloaded (pickles are never
    fetched). Offline cache misses raise ``HubOfflineError`` with the commands that fix them.

    Only ORG/NAME is ever looked up on the Hub: anything else (``./outz``, ``outz``, ``/data/run``)
    is a local folder, and a missing one is said to be missing."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{name_or_path} is a file, not a model folder",
                        "pass the folder that holds config.json and model.safetensors")
    if not is_hub_id(str(name_or_path)):
        raise UserError(f"no such model folder: {name_or_path}",
                        "check the path (a Hub repo is given as ORG/NAME)")
    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, token=token,
                                      allow_patterns=["config.json", "*.safetensors", "model.safetensors.index.json",
                                                      "preprocessor_config.json", "README.md", "results.json"]))
    except Exception as error:
        explained = explain_offline_error(error, str(name_or_path))
        if explained is error:
            raise
        raise explained from error  # the client's own error stays the cause, for tracebacks and --verbose


def load_model(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | None = None,
    for_images: bool = False,
) -> SCEGGModel:
    """Load an SC-EGG checkpoint from a folder or a Hub repo with the installed package's code
    (no remote code runs): ``SCEGGModel``, or with ``for_images`` ``SCEGGForImageClassification``
    (with the checkpoint's backbone, when it has one)."""
    folder = local_model_folder(name_or_path, revision=revision, token=token)
    check_safetensors_only(folder)
    model_class = SCEGGForImageClassification if for_images else SCEGGModel
    return model_class.from_pretrained(folder, use_safetensors=True)


def load_image_processor(name_or_path: str | os.PathLike, *, revision: str | None = None,
                         token: str | None = None) -> SCEGGImageProcessor:
    """The checkpoint's image processor; checkpoints saved before it existed get the standard one
    (448 crops), which is what their region features were made with."""
    folder = local_model_folder(name_or_path, revision=revision, token=token)
    if not (folder / "preprocessor_config.json").is_file():
        return SCEGGImageProcessor()
    return SCEGGImageProcessor.from_pretrained(folder)


def explain_offline_error(exc: BaseException, repo_id: str, repo_type: str = "model") -> BaseException:
    """Turn the client's "offline and not cached" error into ``HubOfflineError`` naming the
    download command and how to load the folder; any other error is returned unchanged. Raise the
    result ``from exc``, so the client's error stays its cause."""
    if not (constants.is_offline_mode() or _caused_by_offline(exc)):
        return exc
    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
    local_dir = f"./{repo_id.split('/')[-1]}"
    type_flag = " --repo-type dataset" if repo_type == "dataset" else ""
    if repo_type == "dataset":
        load = f'datasets.load_dataset("{local_dir}", "features")'
    else:
        load = f'AutoModel.from_pretrained("{local_dir}", trust_remote_code=True)'
    not_local = f" (there is no local folder {repo_id} either)" if repo_type == "model" else ""
    cause = (f"cannot load the {repo_type} '{repo_id}': the Hub client is offline (HF_HUB_OFFLINE=1 or no network) "
             f"and the files are not in the local cache ({constants.HF_HUB_CACHE}){not_local}")
    remedy = (f"where the Hub is reachable run `hf download {repo_id}{type_flag} --local-dir {local_dir}`, copy the "
              f"folder here and load it from disk: {load}; or unset HF_HUB_OFFLINE where the Hub is reachable")
    return HubOfflineError(cause, remedy)


def _caused_by_offline(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
            return True
        current = current.__cause__ or current.__context__
    return False


# ----------------------------------------------------------------------------------------------
# Pushing
# ----------------------------------------------------------------------------------------------
def push_model(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload SC-EGG model",
) -> str:
    """Push a saved SC-EGG model (config, safetensors weights, image processor, remote code, card,
    results) to ``repo_id`` and return the commit URL. Checkpoints, optimizer states and other files
    of the output folder stay local; pickled weights make the push fail rather than be skipped
    quietly. The folder itself is never changed: the card is written for ``repo_id`` in a staging
    copy (hard links, but for the two files it rewrites), so a failed push leaves nothing that
    names the wrong repo behind."""
    folder = Path(output_dir)
    if not HUB_ID.match(repo_id):
        raise UserError(f"not a Hub repo id: {repo_id!r}", "give the repo as ORG/NAME, e.g. alice/sc-egg-cub")
    files = model_files_to_push(folder)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".push-") as scratch:
        staging = Path(scratch)
        for name in files:
            _stage_file(folder / name, staging / name, repo_id)
        if "README.md" not in files:
            write_model_card(staging, repo_id=repo_id)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            delete_patterns=["model*.safetensors", "model.safetensors.index.json"],
            commit_message=commit_message,
        )
    return commit.commit_url


def public_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """results.json as shared: the training arguments that are paths on the training machine
    (``LOCAL_TRAINING_ARGS``) left out, as the card leaves them out."""
    public = dict(record)
    if isinstance(public.get("training_args"), Mapping):
        public["training_args"] = {k: v for k, v in public["training_args"].items() if k not in LOCAL_TRAINING_ARGS}
    return public


def _stage_file(source: Path, target: Path, repo_id: str) -> None:
    """One file of a push, written once: the run's record without the training machine's paths,
    the card with `repo_id` in its snippets, any other file hard-linked (copied where links fail)."""
    if source.name == "results.json":
        record = json.loads(source.read_text(encoding="utf-8"))
        target.write_text(json.dumps(public_record(record), indent=2), encoding="utf-8")
    elif source.name == "README.md":
        card_text = source.read_text(encoding="utf-8")
        target.write_text(card_text.replace(f'"{REPO_PLACEHOLDER}"', f'"{repo_id}"'), encoding="utf-8")
    else:
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)


def model_files_to_push(folder: Path) -> list[str]:
    """The exact top-level files of a model upload, after the checks that make it loadable with
    ``AutoModel.from_pretrained(repo, trust_remote_code=True)`` and free of pickles: the
    safe files and the remote code that the configs name (auto_map, custom_pipelines), with what
    that code imports."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"no such model folder: {folder}", "pass the folder training or save_pretrained wrote")
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    pickled = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise UnsafeWeightsError(
            f"{folder} contains pickle-based files {pickled}; only safetensors are shared. Re-save the model "
            "with save_pretrained() (safetensors is the default) and move the pickles out of the folder."
        )
    config = _read_config(folder)
    auto_map = config.get("auto_map") or {}
    if not {"AutoConfig", "AutoModel"} <= set(auto_map):
        raise ValueError(
            f"{folder / 'config.json'} has no auto_map for AutoConfig/AutoModel (got {auto_map}); save the model "
            "after `import modeling_scegg`, which registers the classes for remote code"
        )
    check_safetensors_only(names)
    code = remote_code_files(folder, config)
    missing = sorted(code - set(names))
    if missing:
        raise UserError(f"{folder} lacks the remote-code files {missing} that its configs name",
                        f"re-save it: SCEGGModel.from_pretrained({str(folder)!r}).save_pretrained({str(folder)!r})")
    safe = {name for name in names if any(fnmatch.fnmatchcase(name, p) for p in SAFE_MODEL_PATTERNS)}
    return sorted(safe | code)


def remote_code_files(folder: Path, config: Mapping[str, Any]) -> set[str]:
    """The ``.py`` files the folder's configs name (model auto_map, custom_pipelines, the image
    processor's auto_map) and, transitively, the files those import relatively."""
    references = list((config.get("auto_map") or {}).values())
    references += [task.get("impl", "") for task in (config.get("custom_pipelines") or {}).values()]
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        references += list((json.loads(processor.read_text(encoding="utf-8")).get("auto_map") or {}).values())
    modules = {reference.rsplit(".", 1)[0] for reference in references if isinstance(reference, str) and "." in reference}
    files = {f"{module}.py" for module in modules}
    for name in list(files):
        if (folder / name).is_file():
            files |= {Path(path).name for path in get_relative_import_files(str(folder / name))}
    return files


def push_feature_dataset(
    folder_or_dataset: str | os.PathLike | Any,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload SC-EGG feature dataset",
) -> str:
    """Push a feature dataset in the Hub layout (``features`` / ``classes`` / ``attributes``
    configs as Parquet, declared in the README's ``configs:``) and return the commit URL.

    A folder is pushed as it is after checking the layout; a dataset object is first written with
    ``modeling_scegg.data.save_zsl_dataset_to_hub_layout``.
    """
    if isinstance(folder_or_dataset, (str, os.PathLike)):
        return _push_dataset_folder(Path(folder_or_dataset), repo_id, token, private, commit_message)
    with tempfile.TemporaryDirectory(prefix="scegg-hub-") as scratch:
        save_zsl_dataset_to_hub_layout(folder_or_dataset, scratch)
        return _push_dataset_folder(Path(scratch), repo_id, token, private, commit_message)


def _push_dataset_folder(folder: Path, repo_id: str, token: str | None, private: bool, commit_message: str) -> str:
    files = dataset_files_to_push(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=folder,
        allow_patterns=files,
        delete_patterns=["*.parquet"],
        commit_message=commit_message,
    )
    return commit.commit_url


def dataset_files_to_push(folder: Path) -> list[str]:
    """README.md plus every Parquet file its ``configs:`` declares, after checking that the three
    configs exist, each pattern matches files, and each table has the columns the loader needs."""
    readme = folder / "README.md"
    if not readme.is_file():
        raise FileNotFoundError(f"{readme} not found: a Hub dataset declares its configs in the README YAML")
    configs = (metadata_load(readme) or {}).get("configs")
    if not isinstance(configs, list):
        raise ValueError(f"{readme}: the YAML front matter has no 'configs:' list")
    declared = {entry.get("config_name"): entry for entry in configs if isinstance(entry, dict)}
    missing = [name for name in REQUIRED_COLUMNS if name not in declared]
    if missing:
        raise ValueError(f"{readme}: configs {missing} are missing; found {sorted(map(str, declared))}")
    files = {"README.md"}
    for name, entry in declared.items():
        matched = _data_files(folder, entry.get("data_files"), f"{readme}: config {name!r}")
        for path in matched:
            if not path.endswith(".parquet"):
                raise ValueError(f"{folder / path}: config {name!r} must be stored as Parquet")
            columns = set(pq.read_schema(folder / path).names)
            needed = REQUIRED_COLUMNS.get(name, ())
            if not set(needed) <= columns:
                raise ValueError(
                    f"{folder / path}: config {name!r} needs columns {list(needed)}, has {sorted(columns)}"
                )
        files.update(matched)
    return sorted(files)


def _data_files(folder: Path, data_files: Any, where: str) -> list[str]:
    """The files a ``data_files`` entry (str, list of str, or list of {split, path}) matches."""
    if isinstance(data_files, str):
        patterns = [data_files]
    elif isinstance(data_files, list):
        patterns = []
        for item in data_files:
            paths = item.get("path") if isinstance(item, dict) else item
            patterns.extend([paths] if isinstance(paths, str) else list(paths or []))
    else:
        raise ValueError(f"{where}: data_files must be a path, a list of paths or a list of {{split, path}}, "
                         f"got {data_files!r}")
    matched = []
    for pattern in patterns:
        hits = sorted(p.relative_to(folder).as_posix() for p in folder.glob(pattern) if p.is_file())
        if not hits:
            raise FileNotFoundError(f"{where}: data_files pattern {pattern!r} matches no file under {folder}")
        matched.extend(hits)
    return matched


__all__ = [
    "HubOfflineError",
    "UnsafeWeightsError",
    "backbone_hub_id",
    "build_model_card",
    "check_safetensors_only",
    "dataset_files_to_push",
    "explain_offline_error",
    "is_hub_id",
    "load_image_processor",
    "load_model",
    "local_model_folder",
    "model_files_to_push",
    "run_protocol",
    "push_feature_dataset",
    "push_model",
    "remote_code_files",
    "write_model_card",
]
