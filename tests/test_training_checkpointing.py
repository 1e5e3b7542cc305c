"""Checkpoint writing on a full disk: said as such (not torch's "basic_ios::clear: iostream
error"), the unfinished checkpoint removed, the last complete one kept; other failures unchanged."""
import errno
import shutil
from collections import namedtuple

import pytest

from modeling_scegg.training.checkpointing import CheckpointManager, DiskFullError, StageState

Usage = namedtuple("Usage", "total used free")


class OneProcess:
    """The part of an Accelerator that CheckpointManager uses, with a save_state that may fail."""

    is_main_process, process_index = True, 0

    def __init__(self, failure: BaseException | None = None):
        self.failure = failure

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str) -> None:
        with open(f"{folder}/model.safetensors", "wb") as handle:
            handle.write(b"0" * 64)
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def full_disk(monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 4096, 4096))


def test_torch_iostream_error_on_a_full_disk_is_said_as_such(tmp_path, full_disk):
    manager = CheckpointManager(tmp_path)
    kept = manager.save_step(OneProcess(), "stage1", StageState(seed=0, step=4))
    state = StageState(seed=0, step=8)
    with pytest.raises(DiskFullError, match=r"the disk is full: writing the checkpoint step_000000008 .*0 MB free.*"
                                            r"--resume true: the last complete checkpoint is kept") as full:
        manager.save_step(OneProcess(RuntimeError("basic_ios::clear: iostream error")), "stage1", state)
    assert full.value.errno == errno.ENOSPC
    assert manager.latest_step("stage1") == kept
    assert sorted(p.name for p in manager.stage_dir("stage1").iterdir()) == [kept.name], "no .tmp folder left"


def test_enospc_from_a_snapshot_is_a_full_disk_whatever_the_free_space(tmp_path):
    def write(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="the disk is full: writing the checkpoint after_stage1"):
        CheckpointManager(tmp_path).finish_stage(OneProcess(), "stage1", write)
    assert not list((tmp_path / "checkpoints").iterdir())


def test_other_write_failures_are_left_as_they_are(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**11, 9 * 10**11))
    with pytest.raises(RuntimeError, match="^basic_ios::clear: iostream error$"):
        CheckpointManager(tmp_path).save_step(OneProcess(RuntimeError("basic_ios::clear: iostream error")), "stage1",
                                              StageState(seed=0, step=4))
