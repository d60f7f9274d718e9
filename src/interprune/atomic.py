"""Atomic outputs: a file or folder is either the old complete one or the new complete one, never half.

Everything is first written to a hidden temporary sibling *in the destination's folder* (so the final
``os.replace`` is a rename on one filesystem, never a copy across ``$TMPDIR``), flushed to disk, then
renamed over the destination. A process killed mid-write leaves only a temporary named
``.<name>.<pid>@<host>.<random>.tmp``; the next write to the same destination (or :func:`clean_stale` on the
folder) removes those whose process is gone. The host is in the name because folders are shared between
machines (``sweep --only`` on a network drive): a pid says nothing about another machine's processes, so
temporaries of other hosts are left alone. A full disk becomes one :class:`InterpruneError` line and
leaves the destination as it was. Everything written honours the user's umask, as ``open()`` would: files
that libraries create privately (safetensors writes weights with mode 0600) are opened up to the modes
their siblings get, so another user or a serving container can load them.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InterpruneError

__all__ = ["write_bytes", "write_text", "atomic_folder", "clean_stale", "is_disk_full", "temporary_name", "host",
           "umask", "honour_umask"]

# ``@<host>`` is absent in names written before hosts were recorded: those count as this host's.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9-]+))?\.[0-9a-f]{8}\.(?:tmp|old)$")
_FULL = (errno.ENOSPC, errno.EDQUOT)


def host() -> str:
    """This machine's name as it appears in temporary names: letters, digits and ``-`` only, at most 40."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "localhost"


def temporary_name(dest: Path, kind: str = "tmp") -> Path:
    """A hidden sibling of ``dest`` that names its writer's pid and host, so cleanup knows when it is stale."""
    return dest.parent / f".{dest.name}.{os.getpid()}@{host()}.{secrets.token_hex(4)}.{kind}"


def umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting it, which
    would race with other threads creating files); the set-and-restore is the fallback off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path, mask: int | None = None) -> None:
    """Give ``path`` the mode ``open()``/``mkdir()`` would have given it under the umask (an executable file
    stays executable): a file a library created with a private mode becomes as readable as its siblings."""
    mask = umask() if mask is None else mask
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return
    wanted = (0o777 if stat.S_ISDIR(mode) or mode & 0o111 else 0o666) & ~mask
    if stat.S_IMODE(mode) != wanted:
        os.chmod(path, wanted)


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) says the disk or quota is full; libraries wrap ``ENOSPC``
    in their own types (safetensors' ``SafetensorError``, torch's ``RuntimeError``), so the text counts too."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return True
        text = str(seen)
        if "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _full(dest: Path) -> InterpruneError:
    return InterpruneError(f"no space left on the device while writing {dest}; free some space and run the command "
                           f"again ({dest.name} was left as it was before)")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove temporaries in ``folder`` (only those for destination ``name`` when given) that were left by
    processes that no longer run; return what was removed. Temporaries of live writers are kept."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if match["host"] not in (None, host()) or _alive(int(match["pid"])):
            continue  # another machine's writer may still be running: only it can tell
        dest = folder / match["name"]
        if path.name.endswith(".old") and not os.path.lexists(dest):
            os.replace(path, dest)  # killed between moving the old version aside and putting the new one in
            removed.append(path)  # place: the old one is the only complete version, so it goes back
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(dest: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``dest`` atomically (temporary sibling, fsync, rename)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest.parent, dest.name)
    tmp = temporary_name(dest)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception) and is_disk_full(err):
            raise _full(dest) from None
        raise
    _fsync_dir(dest.parent)
    return dest


def write_text(dest: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``dest`` atomically."""
    return write_bytes(dest, text.encode())


@contextmanager
def atomic_folder(dest: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; when the block ends without error it replaces ``dest``.

    An existing ``dest`` is an error unless ``overwrite``; it is then moved aside and removed only after
    the new folder is in place, so at every moment one complete version exists under a known name.
    """
    dest = Path(dest)
    if dest.parent.is_dir():
        clean_stale(dest.parent, dest.name)  # first: it may put back a version a killed writer had moved aside
    if dest.exists() and not overwrite:
        raise InterpruneError(f"{dest} already exists; choose another --out or pass --overwrite")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(dest)
    old: Path | None = None
    try:
        tmp.mkdir()  # plain mkdir: the permissions a user expects (mkdtemp's are private)
        yield tmp
        mask = umask()
        for root, folders, files in os.walk(tmp):
            for entry in folders + files:
                honour_umask(Path(root) / entry, mask)
            for file in files:
                fd = os.open(Path(root) / file, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        old = temporary_name(dest, "old") if dest.exists() else None
        if old is not None:
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        if old is not None and old.exists() and not dest.exists():
            os.replace(old, dest)  # the new version never arrived: the old one stays where it was
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and not isinstance(err, InterpruneError) and is_disk_full(err):
            raise _full(dest) from None
        raise
