"""The built wheel works on its own: what CI checks after the tests (``make check-wheel``).

Users install the wheel, not the checkout, so this builds the sdist and the wheel from it (``python -m build``:
the wheel holds only what the sdist carries), checks that every file of the package in the repository (modules,
``py.typed``, the shipped models in ``pretrained/``) is inside it, installs it with its declared dependencies into
a fresh virtual environment in a temporary folder (torch first, the same version as this interpreter's, so that a
CPU build stays a CPU build), and runs ``causaldiffae --help`` and a short ``causaldiffae demo`` there from a
folder outside the checkout, after checking that ``causaldiffae`` is imported from that environment.

Usage: python scripts/check_wheel.py [--torch-index-url URL] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "causaldiffae"
#: What the demo writes for each shipped model (besides report.md): every variable's traversal and a reconstruction.
DEMO_GRIDS = ["pendulum-reconstruction.png", "pendulum-traversal-angle.png", "pendulum-traversal-light.png",
              "morphomnist-reconstruction.png", "morphomnist-traversal-thickness.png",
              "morphomnist-traversal-intensity.png"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-index-url", help="index to install torch from when the configured ones lack this "
                                                  "interpreter's version (the CPU builds' index for a +cpu torch)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        check(args.keep.resolve(), args.torch_index_url)
    else:
        with tempfile.TemporaryDirectory(prefix="causaldiffae-wheel-", dir=_scratch()) as tmp:
            check(Path(tmp), args.torch_index_url)
    return 0


def _scratch() -> str | None:
    """/dev/shm where it is a memory file system with room (the fresh environment's 1.5 GB in 40,000 files are
    written and deleted there in seconds, on a busy disk in minutes), else the system's temporary folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        stats = os.statvfs(shm)
        if stats.f_bavail * stats.f_frsize > 4 * 2**30:
            return str(shm)
    return None


def check(tmp: Path, torch_index_url: str | None) -> None:
    if tmp.is_relative_to(REPO):
        raise SystemExit(f"check-wheel: {tmp} lies inside the checkout; choose a folder outside {REPO}")
    start = time.monotonic()
    env = _clean_env(tmp)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], "build the sdist and the wheel",
         env=env, quiet=True)
    wheel = _only(dist.glob("causaldiffae-*.whl"))
    _check_contents(wheel)

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], "create a fresh virtual environment", env=env)
    python = venv / "bin" / "python"
    torch = f"torch=={version('torch')}"
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if _run([*pip, torch], f"install {torch}", env=env, check=False, quiet=True).returncode != 0:
        if not torch_index_url:
            raise SystemExit(f"check-wheel: cannot install {torch}; pass --torch-index-url (make check-wheel does)")
        _run([*pip, torch, "--index-url", torch_index_url], f"install {torch} from {torch_index_url}", env=env,
             quiet=True)
    _run([*pip, str(wheel)], f"install {wheel.name} and its dependencies", env=env, quiet=True)

    work = tmp / "work"  # outside the checkout: nothing there to import the package from
    work.mkdir()
    found = _run([str(python), "-c", "import causaldiffae; print(causaldiffae.__file__)"],
                 "import causaldiffae", env=env, cwd=work, quiet=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(venv.resolve()):
        raise SystemExit(f"check-wheel: causaldiffae was imported from {found}, not from the wheel in {venv}")
    command = str(venv / "bin" / "causaldiffae")
    _run([command, "--help"], "causaldiffae --help", env=env, cwd=work, quiet=True)
    _run([command, "demo", "--steps", "2", "--out", str(work / "demo")], "causaldiffae demo --steps 2 (the shipped "
         "models, from the wheel)", env=env, cwd=work)
    missing = [name for name in ["report.md", *DEMO_GRIDS] if not (work / "demo" / name).is_file()]
    if missing:
        raise SystemExit(f"check-wheel: the demo did not write {', '.join(missing)}")
    print(f"check-wheel: the wheel works on its own ({time.monotonic() - start:.0f} s)", flush=True)


def _check_contents(wheel: Path) -> None:
    """Every file of the package that the repository tracks (modules and package data) is in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _package_files()
    missing = [f for f in expected if f not in names]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SystemExit(f"check-wheel: {wheel.name} lacks {shown} (package-data in pyproject.toml?)")
    models = sorted({n.split("/")[2] for n in names if n.startswith("causaldiffae/pretrained/")})
    print(f"check-wheel: {wheel.name} holds the package's {len(expected)} files, the shipped models "
          f"{', '.join(models)} among them", flush=True)


def _package_files() -> list[str]:
    """The package's files as wheel paths: what git tracks under src/causaldiffae, or every file there (but
    bytecode) outside a git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", str(PACKAGE)], cwd=REPO, capture_output=True,
                                check=True, text=True).stdout.split("\0")
        files = [REPO / f for f in listed if f]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted(str(p.relative_to(PACKAGE.parent)) for p in files if p.exists())


def _clean_env(tmp: Path) -> dict[str, str]:
    """This environment without the checkout's virtual environment and import paths; caches in ``tmp``."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.update(CAUSALDIFFAE_CACHE=str(tmp / "cache"), MPLCONFIGDIR=str(tmp / "matplotlib"))
    return env


def _run(command: list[str], what: str, env: dict[str, str], cwd: Path | None = None, check: bool = True,
         quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run one step and print how long it took; its output is shown as it runs, or (``quiet``) kept and shown
    only when the step fails."""
    start = time.monotonic()
    result = subprocess.run(command, env=env, cwd=cwd, text=True, capture_output=quiet, stdin=subprocess.DEVNULL)
    print(f"check-wheel: {what}: {time.monotonic() - start:.0f} s", flush=True)
    if result.returncode != 0 and check:
        if quiet:
            sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"check-wheel: {what} failed (exit {result.returncode}): {' '.join(command)}")
    return result


def _only(paths: Iterable[Path]) -> Path:
    found = sorted(paths)
    if len(found) != 1:
        raise SystemExit(f"check-wheel: expected one wheel, found {found}")
    return found[0]


if __name__ == "__main__":
    sys.exit(main())
