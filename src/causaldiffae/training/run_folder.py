"""The run folder: the names a training run writes, the lock that keeps a second process out while one trains
there, and the checks that keep a run from writing over anything it did not make.

A run writes ``config.yaml``, ``metrics.csv``, ``mechanisms.json``, the exported model (``model.safetensors``,
``model_config.json``), ``samples/step-XXXXXXXX-{reconstruction,samples}.png``, ``checkpoints/step-XXXXXXXX/``,
with ``train.log_with`` its trackers' files in ``logs/train/`` and, while it trains, ``train.lock``; atomic writes
put temporary ``.NAME.XXXXXXXX.tmp`` files beside these. Nothing else in the folder is ever read, replaced or
deleted, but for what ``--overwrite`` deletes with them: the files that describe a model (``knobs.json``,
``README.md``) and the reports of the commands that score one (with an evaluation's ``logs/evaluate/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from ..knobs import KNOBS_NAME
from ..model import CONFIG_NAME, WEIGHTS_NAME
from ..tracking import LOGS
from . import checkpoint

LOCK_NAME = "train.lock"
MECHANISMS_LOG = "mechanisms.json"  # rows and validation fit of each label mechanism
#: Files a run writes at the top of its folder (besides the folders samples/ and checkpoints/).
RUN_FILES = ("config.yaml", "metrics.csv", MECHANISMS_LOG, WEIGHTS_NAME, CONFIG_NAME)
#: Files beside a model that describe it, which a run does not write: its tuned knobs (tune --apply), its README.
MODEL_NOTES = (KNOBS_NAME, "README.md")
#: The reports of tune, evaluate, mechanisms and benchmark, when written into a model's folder (--out RUN).
REPORTS = ("tune.json", "tune.md", "metrics.json", "report.md", "guidance-sweep.png", "mechanisms.md",
           "benchmark.json", "benchmark.md")
GRID = re.compile(r"step-\d{8,}-(reconstruction|samples)\.png")
#: atomic.py's temporary names: ``.NAME.`` + tempfile's 8 random characters + ``.tmp``.
TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")
#: The trackers' folders in ``logs/``: the run's own, and that of an evaluation written into the run folder.
TRACKER_RUNS = ("train", "evaluate")
#: Config keys a resumed run may change freely: its budget and how often and where it logs, samples and saves.
RESUMABLE = {"train.max_steps", "train.max_minutes", "train.log_every", "train.log_with", "train.sample_every",
             "train.checkpoint_every", "train.keep_checkpoints", "train.grid_images", "train.grid_steps"}
#: An unreadable lock younger than this is being written by its holder; an older one was left by a crash.
_LOCK_GRACE_S = 10.0
_UNSET = object()


class RunInUse(ValueError):
    """Another process trains in the run folder (it holds the lock)."""


def is_run_file(run: Path, path: Path) -> bool:
    """Whether ``path`` is (or would be) one of the files a training run or an exported model keeps in ``run``."""
    try:
        rel = Path(os.path.realpath(path)).relative_to(os.path.realpath(run))
    except ValueError:
        return False
    parts = rel.parts
    if len(parts) == 1:
        return parts[0] in (*RUN_FILES, *MODEL_NOTES, LOCK_NAME)
    if len(parts) == 2 and parts[0] == "samples":
        return bool(GRID.fullmatch(parts[1]))
    if len(parts) >= 2 and parts[0] == LOGS:
        return parts[1] == "train"
    return bool(parts) and parts[0] == "checkpoints"


@contextlib.contextmanager
def lock(run: Path, warn: Callable[[str], None], enabled: bool = True) -> Iterator[None]:
    """Hold ``RUN/train.lock`` (pid, host, start time) while the block runs; a lock whose process is gone is
    reported and taken over. A folder made for the lock is removed again if it is left empty."""
    if not enabled:
        yield
        return
    if run.exists() and not run.is_dir():
        raise ValueError(f"--out {run} is a file, not a folder: choose a folder for the run")
    created = not run.is_dir()
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK_NAME
    token = _acquire(path, warn)
    try:
        yield
    finally:
        holder = _read_lock(path)
        if holder is not None and holder[1].get("token") == token:
            path.unlink()
        if created:
            with contextlib.suppress(OSError):
                run.rmdir()  # only if nothing was written


def prepare(run: Path, resume: bool, overwrite: bool, warn: Callable[[str], None]) -> None:
    """Check (and with ``overwrite`` clear) the run folder before a run writes into it; under the lock.

    A new run needs an empty folder, or one where a run stopped before its first checkpoint (it starts again,
    with a warning); ``resume`` a folder with checkpoints (whether they are intact is checked when loading
    them); ``overwrite`` deletes the files of an earlier run or model (see :func:`_remove_run_files`; never other
    files, which a warning lists). Temporary files of interrupted atomic writes are removed."""
    entries = [p for p in run.iterdir() if p.name != LOCK_NAME and not _temporary(p, "run")]
    if resume and not checkpoint.checkpoints(run):
        raise checkpoint.nothing_to_resume(run)
    if not resume and not overwrite and entries:
        names = sorted(p.name for p in entries)
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        if checkpoint.checkpoints(run):
            raise ValueError(f"{run} already holds checkpoints; pass --resume to continue it, --overwrite to start "
                             "again there, or choose a new --out")
        if not all(_unfinished_run_file(p) for p in entries):
            raise ValueError(f"{run} is not empty ({shown}): a new run starts in a new or empty folder; pass "
                             "--overwrite to replace the files of an earlier run there (other files are kept)")
        warn(f"{run} holds a run that stopped before its first checkpoint ({shown}): starting it again")
        overwrite = True
    _remove_temporaries(run)
    if overwrite:
        _remove_run_files(run)
        kept = sorted(p.name + ("/" if p.is_dir() else "") for p in run.iterdir() if p.name != LOCK_NAME)
        if kept:
            shown = ", ".join(kept[:6]) + (f" and {len(kept) - 6} more" if len(kept) > 6 else "")
            warn(f"--overwrite deleted the earlier model's files in {run} but kept {len(kept)} it did not write: "
                 f"{shown}")


def check_config(run: Path, resolved: dict[str, Any], allow: bool) -> None:
    """On resume: the resolved config must be the run's ``config.yaml`` but for :data:`RESUMABLE` keys (a key
    that file lacks, an option newer than the run, is not compared)."""
    path = run / "config.yaml"
    if allow or not path.is_file():
        return
    hint = ("pass --allow-config-change to continue with the new config, or resume with the run's own "
            f"(causaldiffae train {path} --out {run} --resume)")
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"--resume: {path} is unreadable ({str(err).splitlines()[0]}); {hint}") from None
    if not isinstance(saved, dict):
        raise ValueError(f"--resume: {path} holds no config (a {type(saved).__name__}, not a mapping); {hint}")
    new = _flatten(yaml.safe_load(yaml.safe_dump(resolved, sort_keys=False)))
    old = _flatten(saved)
    changed = [k for k in sorted(old) if k not in RESUMABLE and old[k] != new.get(k, _UNSET)]
    if changed:
        shown = ", ".join(f"{k} {_short(old[k])} -> {_short(new.get(k, _UNSET))}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ValueError(f"--resume: the config differs from the run's {path}: {shown}{more}; {hint}")


# -- the lock --------------------------------------------------------------------------------------------


def _acquire(path: Path, warn: Callable[[str], None]) -> str:
    """Create the lock file atomically (O_CREAT | O_EXCL) and return its token; refuse a live holder."""
    token = uuid.uuid4().hex
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "process_start": _process_start(os.getpid()), "token": token}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:
                continue  # released meanwhile
            text, info = holder
            if _alive(info, path):
                raise RunInUse(_held_message(path, info)) from None
            if _break(path, text):
                warn(f"{path} was left by {_who(info)}, which is no longer running; taking the run folder over")
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(record) + "\n")
        return token
    raise RunInUse(f"{path}: another process keeps taking this run folder's lock; choose another --out")


def _read_lock(path: Path) -> tuple[str, dict[str, Any]] | None:
    """(raw text, parsed record) of the lock file; a record of {} when it is unreadable; None when it is gone."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        info = {}
    return text, info if isinstance(info, dict) else {}


def _alive(info: dict[str, Any], path: Path) -> bool:
    """Whether the lock's holder may still run: unknowable on another host; an unreadable lock is alive while
    young (its holder is writing it)."""
    pid = info.get("pid")
    if type(pid) is not int or pid <= 0:
        try:
            return time.time() - path.stat().st_mtime < _LOCK_GRACE_S
        except FileNotFoundError:
            return False
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    recorded, now = info.get("process_start"), _process_start(pid)
    return not (recorded and now and recorded != now)  # else the pid was reused by another process


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux /proc), to tell a reused pid from the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _break(path: Path, seen: str) -> bool:
    """Remove the stale lock ``seen``: rename it aside (one process wins) and put back what was moved if another
    process had taken the lock in the meantime."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        if aside.read_text(errors="replace") == seen:
            return True
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        return False
    finally:
        aside.unlink()


def _who(info: dict[str, Any]) -> str:
    if "pid" not in info:
        return "a process that did not finish writing it"
    return f"process {info['pid']} on {info.get('host', '?')} (started {info.get('started', '?')})"


def _held_message(path: Path, info: dict[str, Any]) -> str:
    gone = "" if info.get("host") == socket.gethostname() else f"; delete {path} only if that process is gone"
    return (f"{path.parent} is in use: {_who(info)} is training there ({path}); wait for it to end or choose "
            f"another --out{gone}")


# -- what the run wrote ----------------------------------------------------------------------------------


def _temporary(path: Path, where: str) -> bool:
    """A temporary file or folder of an atomic write of one of the run's own names (left by a killed run) in
    the run folder (``where`` = run), its checkpoints/ or its samples/."""
    match = TEMPORARY.fullmatch(path.name)
    if match is None:
        return False
    if where == "checkpoints":
        return bool(checkpoint.NAME.fullmatch(match[1]))
    if where == "samples":
        return bool(GRID.fullmatch(match[1]))
    return match[1] in (*RUN_FILES, LOCK_NAME)


def _unfinished_run_file(path: Path) -> bool:
    """What a run that stopped before its first checkpoint leaves: config, metrics, the mechanisms' fit, grids,
    its trackers' logs, temporary files (a model, written only with a checkpoint, means a finished model, which is
    never replaced unasked)."""
    if path.name in ("config.yaml", "metrics.csv", MECHANISMS_LOG):
        return path.is_file() and not path.is_symlink()
    if path.name == LOGS and path.is_dir() and not path.is_symlink():
        return all(p.name == "train" for p in path.iterdir())
    if path.name in ("samples", "checkpoints") and path.is_dir() and not path.is_symlink():
        return all(_temporary(p, path.name) or (path.name == "samples" and GRID.fullmatch(p.name) and p.is_file())
                   for p in path.iterdir())
    return False


def _remove_temporaries(run: Path) -> None:
    for where, folder in (("run", run), ("checkpoints", run / "checkpoints"), ("samples", run / "samples")):
        if folder.is_dir():
            for path in folder.iterdir():
                if _temporary(path, where):
                    _remove(path)


def _remove_run_files(run: Path) -> None:
    """Delete what describes an earlier run or model: what a run writes (config, metrics, mechanisms' fit, model,
    grids, checkpoints, its trackers' logs), the model's knobs and README, and reports written beside it (with an
    evaluation's logs); keep everything else (a new model that found the old one's knobs.json would run at them)."""
    for name in (*RUN_FILES, *MODEL_NOTES, *REPORTS):
        if (run / name).is_file() or (run / name).is_symlink():  # a folder of that name is the user's: kept
            (run / name).unlink()
    for path in checkpoint.checkpoints(run):
        _remove(path)
    samples = run / "samples"
    if samples.is_dir():
        for path in samples.iterdir():
            if GRID.fullmatch(path.name) and path.is_file():
                path.unlink()
    for name in TRACKER_RUNS:
        if (run / LOGS / name).is_dir() and not (run / LOGS / name).is_symlink():
            _remove(run / LOGS / name)
    for folder in (run / "checkpoints", samples, run / LOGS):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value: Any) -> str:
    text = "(unset)" if value is _UNSET else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
