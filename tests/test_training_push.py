"""`--push_to_hub` at the end of training, through the local Hub stand-in with the stock client."""
import json

from hub_server import HubStandIn, hub_endpoint, hub_server, run_client  # noqa: F401 - fixtures
from test_training_pipeline import tiny_argv

from modeling_scegg import hub


def test_training_pushes_model_card_and_results(hub_endpoint: HubStandIn, tmp_path):
    argv = tiny_argv(tmp_path / "out", tmp_path / "cache", "--stage3_epochs", "1", "--plots", "false",
                     "--push_to_hub", "true", "--hub_model_id", "alice/trained-tiny")
    code = f"import sys\nfrom modeling_scegg.cli import main\nsys.exit(main(['train', *{argv!r}]))\n"
    run_client(code, hub_endpoint.endpoint, tmp_path / "work", name="train_push")
    repo = hub_endpoint.repos[("model", "alice/trained-tiny")]
    files = repo.commits[repo.branches["main"]].files
    assert {"config.json", "model.safetensors", "modeling_sc_egg.py", "configuration_scegg.py",
            "README.md", "results.json"} <= set(files)
    assert not any(name.startswith("checkpoints/") or name.endswith((".bin", ".pkl", ".pt")) for name in files)
    local = json.loads((tmp_path / "out" / "results.json").read_text())
    pushed = json.loads(files["results.json"].content)
    assert "output_dir" in local["training_args"] and "cache_dir" in local["training_args"]
    assert pushed == {**local, "training_args": {k: v for k, v in local["training_args"].items()
                                                 if k not in hub.LOCAL_TRAINING_ARGS}}
    assert "output_dir" not in pushed["training_args"] and "seed" in pushed["training_args"]
    assert b"alice/trained-tiny" in files["README.md"].content
    pull = (
        "import json\nfrom transformers import AutoImageProcessor, AutoModel, pipeline\n"
        "from huggingface_hub import ModelCard\n"
        "repo = 'alice/trained-tiny'\n"
        "model = AutoModel.from_pretrained(repo, trust_remote_code=True)\n"
        "processor = AutoImageProcessor.from_pretrained(repo, trust_remote_code=True)\n"
        "tasks = [type(pipeline(t, model=repo, trust_remote_code=True)).__name__\n"
        "         for t in ('image-classification', 'zero-shot-image-classification')]\n"
        "card = ModelCard.load(repo)\n"
        "print(json.dumps({'module': type(model).__module__, 'processor': type(processor).__name__, 'tasks': tasks,\n"
        "                  'tag': card.data.pipeline_tag, 'text': card.text}))\n"
    )
    report = json.loads(run_client(pull, hub_endpoint.endpoint, tmp_path / "pull", name="pull",
                                   with_package=False).stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules") and report["processor"] == "SCEGGImageProcessor"
    assert report["tasks"] == ["SCEGGImageClassificationPipeline", "SCEGGZeroShotImageClassificationPipeline"]
    assert report["tag"] == "zero-shot-image-classification"
    assert "honest, fixed schedule" in report["text"] and "As the run recorded it: fixed schedule" in report["text"]
