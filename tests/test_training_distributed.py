"""Two processes on CPU (gloo DDP): identical parameters on both ranks after every stage, and
metrics gathered over every test sample exactly once."""
import json
import os
import subprocess
import sys
from pathlib import Path

from test_training_pipeline import tiny_argv

from modeling_scegg.training import parse_training_args
from modeling_scegg.training.loading import load_data

HERE = Path(__file__).resolve().parent


def test_two_processes_agree_and_count_each_sample_once(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = tiny_argv(out, cache)
    # odd test-set sizes make the shards uneven, so padding would be counted without gather_for_metrics
    argv[argv.index("--synthetic_overrides") + 1:argv.index("--model_overrides")] = [
        "num_classes=10", "num_unseen=3", "num_val=2", "num_attributes=8", "num_regions=4", "feature_dim=16",
        "word_dim=12", "train_images_per_class=12", "test_seen_images_per_class=5", "test_unseen_images_per_class=7"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(HERE / "distributed_train.py"), *argv]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((out / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert ranks[0]["hash"] == ranks[1]["hash"]
    assert ranks[0]["results"] == ranks[1]["results"]
    data = load_data(parse_training_args(argv))
    assert ranks[0]["results"]["num_test_seen"] == len(data.splits["test_seen"]) == 35
    assert ranks[0]["results"]["num_test_unseen"] == len(data.splits["test_unseen"]) == 21
    assert (out / "results.json").is_file()
