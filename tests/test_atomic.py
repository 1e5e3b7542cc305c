"""Atomic writes: a failed write leaves the old file and no temporary behind."""
import pytest

from modeling_scegg.atomic import atomic_path, atomic_write_text


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "results.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_a_finished_write_replaces_the_file(tmp_path):
    target = tmp_path / "plot.png"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".plot.png.")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 1
