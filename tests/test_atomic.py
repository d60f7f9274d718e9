import errno
import os
import subprocess

import pytest

from interprune import InterpruneError
from interprune import atomic
from interprune.atomic import atomic_folder, clean_stale, is_disk_full, temporary_name, write_bytes, write_text


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_write_replaces_whole_files_with_normal_permissions(tmp_path):
    path = write_text(tmp_path / "sub" / "a.txt", "one")
    write_text(path, "two")
    assert path.read_text() == "two" and leftovers(path.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_full_disk_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch):
    path = write_text(tmp_path / "a.txt", "old")
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "write", half_then_full)
    with pytest.raises(InterpruneError, match=r"no space left on the device while writing .*a.txt; free some space"):
        write_text(path, "new and longer")
    assert path.read_text() == "old" and leftovers(tmp_path) == []


def test_folder_appears_complete_or_not_at_all(tmp_path):
    dest = tmp_path / "model"
    with atomic_folder(dest) as tmp:
        (tmp / "a").write_text("1")
        assert not dest.exists() and tmp.parent == tmp_path and tmp.name.startswith(".model.")
    assert (dest / "a").read_text() == "1"
    with pytest.raises(InterpruneError, match="already exists"):
        with atomic_folder(dest):
            pass
    with pytest.raises(RuntimeError):
        with atomic_folder(dest, overwrite=True) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in dest.iterdir()) == ["a"] and leftovers(tmp_path) == []
    with pytest.raises(InterpruneError, match="no space left"):
        with atomic_folder(dest, overwrite=True):
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")  # safetensors
    with atomic_folder(dest, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in dest.iterdir()) == ["b"] and leftovers(tmp_path) == []


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    dest = tmp_path / "data"
    stale_dir = tmp_path / f".data.{dead_pid()}.0123abcd.tmp"
    stale_dir.mkdir()
    (stale_dir / "big.jpg").write_bytes(b"x" * 1000)
    stale_file = tmp_path / f".summary.json.{dead_pid()}.89abcdef.tmp"
    stale_file.write_text("{")
    live = temporary_name(tmp_path / "data")  # ours: this process is alive
    live.mkdir()
    other = tmp_path / ".notes.txt"  # not ours at all
    other.write_text("keep")
    with atomic_folder(dest) as tmp:  # the next write to the same destination cleans its own leftovers
        (tmp / "a").write_text("1")
    assert not stale_dir.exists() and stale_file.exists() and live.exists()
    assert clean_stale(tmp_path) == [stale_file]  # a whole folder at once (what train does in a run folder)
    assert live.exists() and other.exists()


def test_disk_full_is_recognised_through_wrappers():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("PytorchStreamWriter failed writing file") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("bad"))


def test_write_bytes_takes_memoryviews(tmp_path):
    data = bytearray(range(256)) * 100
    assert write_bytes(tmp_path / "b", memoryview(data)).read_bytes() == bytes(data)


def test_a_version_moved_aside_by_a_killed_writer_is_put_back_not_deleted(tmp_path, monkeypatch):
    dest = tmp_path / "model"
    with atomic_folder(dest) as tmp:
        (tmp / "weights").write_text("old")
    # killed between moving the old version aside and renaming the new one into place: only the two temporaries
    pid = dead_pid()
    os.replace(dest, tmp_path / f".model.{pid}.0123abcd.old")
    (tmp_path / f".model.{pid}.89abcdef.tmp").mkdir()
    with pytest.raises(InterpruneError, match="already exists"):  # the old version is back, so no silent overwrite
        with atomic_folder(dest):
            pass
    assert (dest / "weights").read_text() == "old" and leftovers(tmp_path) == []
    # and a write whose final rename fails leaves the old version where it was
    real = os.replace

    def failing(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        with atomic_folder(dest, overwrite=True) as tmp:
            (tmp / "weights").write_text("new")
    monkeypatch.setattr(os, "replace", real)
    assert (dest / "weights").read_text() == "old" and leftovers(tmp_path) == []


def test_temporary_names_carry_the_host_and_other_hosts_temporaries_are_left_alone(tmp_path):
    ours = temporary_name(tmp_path / "model.safetensors")
    assert ours.name.startswith(f".model.safetensors.{os.getpid()}@{atomic.host()}.") and ours.name.endswith(".tmp")
    dead = dead_pid()
    here = tmp_path / f".run.{dead}@{atomic.host()}.0123abcd.tmp"  # this host, writer gone: stale
    there = tmp_path / f".run.{dead}@another-machine.0123abcd.tmp"  # that pid may be alive on another machine
    legacy = tmp_path / f".run.{dead}.89abcdef.tmp"  # written before hosts were recorded: counted as this host's
    for path in (here, there, legacy):
        path.mkdir()
    assert sorted(clean_stale(tmp_path)) == sorted([here, legacy]) and there.exists()


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_a_folder_honours_the_umask_even_for_files_a_library_made_private(tmp_path, mask, file_mode, folder_mode):
    from .conftest import tiny_detr

    from interprune.hf.models import save

    old = os.umask(mask)
    try:
        save(tiny_detr(), tmp_path / "model")  # save_pretrained: safetensors writes the weights with mode 0600
        with atomic_folder(tmp_path / "other") as tmp:
            os.close(os.open(tmp / "private", os.O_WRONLY | os.O_CREAT, 0o600))
            (tmp / "tool").write_text("#!/bin/sh\n")
            os.chmod(tmp / "tool", 0o700)
            os.mkdir(tmp / "sub", 0o700)
        write_text(tmp_path / "report.md", "# report\n")
    finally:
        os.umask(old)
    mode = lambda path: path.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "model" / "model.safetensors") == file_mode
    assert mode(tmp_path / "model" / "config.json") == file_mode and mode(tmp_path / "model") == folder_mode
    assert mode(tmp_path / "other" / "private") == file_mode and mode(tmp_path / "report.md") == file_mode
    assert mode(tmp_path / "other" / "tool") == folder_mode  # executable bits kept, under the umask
    assert mode(tmp_path / "other" / "sub") == folder_mode
