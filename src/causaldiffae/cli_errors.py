"""The one line the command line prints for a handled error (``describe``), and the clean-up around it.

A file-system error names the file the user named, not the temporary file of an atomic write; a failed write to
standard output says so; a request too large for the memory says what to lower.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path

#: The modules of the command line, which write files only through other modules: an error that a builtin raises
#: in one of them comes from a print or the flush of standard output.
_CLI_MODULES = ("cli.py", "cli_args.py", "cli_commands.py", "cli_errors.py")
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")  # atomic.atomic_path's temporary names
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def describe(err: BaseException, out: str | None = None) -> str:
    """The one line of a handled error: its own message, or for a file-system error what went wrong with which path
    (the file the user named, not the temporary file of an atomic write); ``out`` is the command's --out, named
    when a write fails without saying where (a full disk)."""
    if isinstance(err, MemoryError) or out_of_memory(err):
        return "out of memory: ask for fewer images or values, or a smaller --batch-size / train.batch_size"
    if not isinstance(err, OSError) or (err.filename is None and err.filename2 is None):
        if not isinstance(err, OSError) or err.errno is None or not err.strerror:
            return str(err) or type(err).__name__
        if _raised_here(err):  # by a print or the flush of stdout: the command line writes files only through others
            silence_stdout()
            return f"cannot write to standard output: {err.strerror}"
        return err.strerror + (f" (writing --out {out})" if out and err.errno in _WRITE_ERRORS else "")
    path = _named_path(err.filename2 if err.filename2 is not None else err.filename)
    if err.errno == errno.EISDIR:
        return f"{path} is a folder where a file is needed"
    if err.errno == errno.ENOTDIR:
        return f"{path}: a part of this path is a file, not a folder"
    if err.errno == errno.EEXIST and not os.path.isdir(path):
        return f"{path} is a file where a folder is needed"
    return f"{err.strerror or err}: {path}"


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is torch's (or the allocator's) out-of-memory RuntimeError."""
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)


def end_progress_bars() -> None:
    """Close the progress bars an error left open, so that the error line starts a line of its own (and no bar
    redraws itself over it later, when it is garbage-collected)."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # a bar that cannot draw any more must not hide the error
            pass


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not report the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        pass


def _named_path(name: str | bytes | int) -> str:
    path = Path(os.fsdecode(name)) if not isinstance(name, int) else Path(f"file descriptor {name}")
    match = _TEMPORARY.fullmatch(path.name)
    return str(path.with_name(match["name"]) if match else path)


def _raised_here(err: BaseException) -> bool:
    """Whether ``err`` was raised by a builtin called from the command line's own modules (not from a module they
    called)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    where = Path(tb.tb_frame.f_code.co_filename)
    return where.name in _CLI_MODULES and where.parent == Path(__file__).parent
