"""Runs that cannot mix: a resumed run on other data or with other settings is refused naming the
first difference (arguments that only log or place outputs may change), and a second run into a
folder that a run holds is refused at once, whatever --checkpoint_every is."""
import json
import subprocess
import sys

import pytest
from test_training_pipeline import tiny_argv

from modeling_scegg.training import parse_training_args, run_pipeline
from modeling_scegg.training.run_lock import (
    IDENTITY_FILE_NAME,
    LOCK_FILE_NAME,
    RESUMABLE_ARGUMENTS,
    ResumeMismatchError,
    RunInProgressError,
    first_difference,
)

HOLD = ("import sys, time\nfrom filelock import FileLock\nlock = FileLock(sys.argv[1])\nlock.acquire()\n"
        "print('held', flush=True)\ntime.sleep(120)")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("cache")
    results = run_pipeline(parse_training_args(tiny_argv(out, cache, "--plots", "false")))
    return out, cache, results


def _with_data(argv: list[str], *changes: str) -> list[str]:
    """tiny_argv with some --synthetic_overrides entries replaced."""
    start = argv.index("--synthetic_overrides") + 1
    end = argv.index("--model_overrides")
    keys = {change.split("=")[0] for change in changes}
    return argv[:start] + [a for a in argv[start:end] if a.split("=")[0] not in keys] + list(changes) + argv[end:]


@pytest.mark.parametrize("change, named", [
    (("--seed", "3"), "arguments.seed was 42 when the run started, 3 now"),
    (("--stage3_epochs", "5"), "arguments.stage3_epochs was 3 when the run started, 5 now"),
    (("--model_overrides", "encoder_hidden_dim=64"), "model"),
    (("DATA", "num_classes=12"), "data.class_names was [\"class_0\""),
])
def test_a_resumed_run_with_other_data_or_settings_is_refused(finished, change, named):
    out, cache, _ = finished
    before = (out / "results.json").read_text()
    argv = tiny_argv(out, cache, "--plots", "false", "--resume", "true")
    argv = _with_data(argv, change[1]) if change[0] == "DATA" else argv + list(change)
    with pytest.raises(ResumeMismatchError, match="--resume true would continue the run") as refused:
        run_pipeline(parse_training_args(argv))
    assert named in str(refused.value)
    assert (out / "results.json").read_text() == before, "nothing of the finished run may be rewritten"


def test_resuming_with_only_logging_and_output_arguments_changed_goes_on(finished):
    out, cache, results = finished
    argv = tiny_argv(out, cache, "--plots", "false", "--resume", "true", "--checkpoint_every", "1000")
    assert run_pipeline(parse_training_args(argv))["czsl_acc"] == results["czsl_acc"]
    recorded = json.loads((out / "checkpoints" / IDENTITY_FILE_NAME).read_text())
    assert not set(recorded["arguments"]) & RESUMABLE_ARGUMENTS
    assert recorded["data"]["split_sizes"] == {"test_seen": 28, "test_unseen": 18, "train": 84, "train_sub": 60, "val": 24}


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    """Another process holds the folder (as a run does for its whole length)."""
    (tmp_path / "out").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out" / LOCK_FILE_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = tiny_argv(tmp_path / "out", tmp_path / "cache", "--checkpoint_every", "100000")
        with pytest.raises(RunInProgressError, match="another scegg run is writing into .*out"):
            run_pipeline(parse_training_args(argv))
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "out" / "checkpoints").exists(), "the refused run must not have written anything"


def test_first_difference_names_the_path_of_the_first_changed_entry():
    old = {"data": {"a": 1, "b": [1, 2]}, "arguments": {"seed": 1}}
    assert first_difference(old, old) is None
    assert first_difference(old, {"data": {"a": 1, "b": [1, 3]}, "arguments": {"seed": 2}}) == \
        "data.b was [1, 2] when the run started, [1, 3] now"
    assert first_difference(old, {"data": {"a": 1, "b": [1, 2]}, "arguments": {"seed": 1, "new": 0}}) == \
        'arguments.new was "<absent>" when the run started, 0 now'
