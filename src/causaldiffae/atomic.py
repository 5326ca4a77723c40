"""Atomic writes: a temporary name in the same folder, then a rename, so a killed run leaves nothing half-written.

A write that fails (a full disk) raises an OSError that names the file the user asked for, not the temporary one,
also where the writer's own error says only "os error 28" (safetensors): the command line prints it as one line.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from safetensors import SafetensorError

T = TypeVar("T")
#: The OS error inside a SafetensorError's text: "... (os error 28)" (safetensors 0.5 on), "Os { code: 28, ..." before.
_OS_ERROR = re.compile(r"os error (\d+)|code: (\d+)")
#: How long a reader waits for a write in progress to finish before it reads what is there (a temporary file that
#: stays this long was left by a killed writer).
WRITE_WAIT_S = 10.0


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make outputs unreadable to other users
    try:
        with naming(path, tmp):
            yield Path(tmp)
        os.chmod(tmp, 0o644)  # again: a writer may have replaced the file (safetensors' save_file makes it 0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def naming(path: str | Path, tmp: str | Path | None = None) -> Iterator[None]:
    """Make a write error in the block an OSError that names ``path`` (where it named the temporary ``tmp``, or
    nothing: a full disk while writing or closing a file), so that the user reads which file could not be written;
    safetensors' SafetensorError, which carries the OS error only in its text, becomes that OSError too."""
    try:
        yield
    except OSError as err:
        if err.errno is None:
            raise
        raise OSError(err.errno, err.strerror or str(err), _outside(err.filename, tmp, path)) from err
    except SafetensorError as err:
        match = _OS_ERROR.search(str(err))
        if match is None:
            raise
        code = int(match[1] or match[2])
        raise OSError(code, os.strerror(code), str(path)) from err


def _outside(filename: str | bytes | int | None, tmp: str | Path | None, path: str | Path) -> str | bytes | int:
    """``filename`` of an error, with the temporary ``tmp`` (a file or a folder) replaced by ``path``."""
    if filename is None:
        return str(path)
    if tmp is None or not isinstance(filename, str):
        return filename
    tmp = str(tmp)
    if filename == tmp or filename.startswith(tmp + os.sep):
        return str(path) + filename[len(tmp):]
    return filename


def writing(path: str | Path) -> bool:
    """Whether an atomic write of ``path`` is in progress: its temporary file (``atomic_path``'s name) exists and
    was written to in the last ``WRITE_WAIT_S`` (an older one was left by a killed writer)."""
    path = Path(path)
    for tmp in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(tmp).st_mtime < WRITE_WAIT_S:
                return True
    return False


def read_together(paths: Sequence[Path], read: Callable[[], T], wait_s: float = WRITE_WAIT_S) -> T:
    """Call ``read`` (which reads ``paths``) until none of them changed while it ran and no atomic write of one is in
    progress, waiting at most ``wait_s`` for a write to finish: what it returns is then one state of the files,
    although another process replaces them one by one meanwhile (a training run exporting its model)."""
    deadline = time.monotonic() + wait_s
    while True:
        before = [_identity(p) for p in paths]
        result = read()
        busy = any(writing(p) for p in paths) and time.monotonic() < deadline
        if not busy and [_identity(p) for p in paths] == before:
            return result
        time.sleep(0.02)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Which file ``path`` is (an atomic replace makes a new one), or None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@contextlib.contextmanager
def atomic_dir(path: str | Path, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` in one rename.

    With ``marker`` (a file name) an existing ``path`` is replaced only if it is empty or holds that file, the
    mark of a folder written this way (the new folder gets it too): a folder of the user's is never deleted."""
    path = Path(path)
    if marker is not None:
        check_replaceable(path, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with naming(path, tmp):
            yield tmp
            if marker is not None:
                (tmp / marker).write_text(f"written by causaldiffae, which may replace this folder: {path.name}\n")
        if marker is not None:
            check_replaceable(path, marker)  # again: something may have been put there meanwhile
        _make_readable(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def check_replaceable(path: str | Path, marker: str) -> None:
    """Refuse (ValueError) to replace ``path`` unless it is absent, an empty folder or a folder holding ``marker``;
    writers call it up front too, to refuse before any work."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ValueError(f"{path} exists and is not a folder: choose a new or empty folder")
    if not path.is_dir() or (path / marker).is_file():
        return
    entries = sorted(p.name for p in path.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ValueError(f"{path} is not empty ({shown}) and causaldiffae did not write it (no {marker} in it), "
                         "so it is not replaced: choose a new or empty folder, or delete it yourself")


def _make_readable(folder: Path) -> None:
    """Folders 0755 and files 0644, like a plain mkdir and open: mkdtemp and safetensors make them private."""
    os.chmod(folder, 0o755)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
