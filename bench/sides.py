"""The two sides of ``bench.compare``: a tree of relay code and the interpreter that runs it.

The new side is the current working tree with the interpreter running the comparison
(``make`` runs ``.venv/bin/python``).  The old side is a git revision unpacked with
``git archive`` into ``bench/out/compare/<commit>/src`` (gitignored; no worktree to
register or prune) with a virtualenv of its own, ``src/.venv``, made once and reused:
``python -m venv`` and ``pip install -e`` from the same registries as the current one
(pip reads the same configuration), constrained to the current virtualenv's versions
(``pip freeze``), so the two sides differ in MailFlow's code and nothing else.
Delete ``bench/out/compare/`` to rebuild it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "out" / "compare"
WORKER = Path(__file__).with_name("compare_worker.py")
# The files that take the measurements; the report says whether the sides' copies differ.
MEASURING = ("bench/scenarios.py", "bench/loadgen.py", "bench/probe.py", "bench/sinks.py",
             "bench/arrivals.py", "mailflow/testing/relay.py")


class SideError(RuntimeError):
    """A side could not be prepared or one of its runs failed."""


@dataclass(frozen=True)
class Side:
    name: str        # "old" or "new"
    label: str       # for the tables: "today (git 9f89b2a)", "redesign (git ...)"
    root: Path       # the tree whose mailflow/ runs
    python: Path     # the interpreter with that tree installed


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise SideError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve(rev: str) -> str:
    """The full commit id of ``rev``."""
    return git("rev-parse", "--verify", f"{rev}^{{commit}}")


def freeze(python: Path) -> list[str]:
    """``pip freeze`` of an interpreter, without editable installs (MailFlow itself)."""
    done = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable",
                           "--disable-pip-version-check"], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise SideError(f"pip freeze with {python} failed: {done.stderr.strip()[-1000:]}")
    return sorted(line for line in done.stdout.splitlines() if line and "==" in line)


def base_python() -> str:
    """The interpreter the current virtualenv was made from (same Python version)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def unpack(commit: str, dest: Path) -> None:
    """``git archive`` of ``commit`` into ``dest`` (made anew)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tempfile.TemporaryFile() as archive:
        done = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT,
                              stdout=archive, stderr=subprocess.PIPE, timeout=300)
        if done.returncode != 0:
            raise SideError(f"git archive {commit}: {done.stderr.decode().strip()}")
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(dest, filter="data")


def old_side(rev: str, log: Any = print) -> Side:
    """The revision ``rev`` unpacked under ``bench/out/compare`` with its virtualenv."""
    commit = resolve(rev)
    home = CACHE / commit[:12]
    src = home / "src"
    if not (home / "unpacked").exists():
        log(f"bench.compare: unpacking git {commit[:12]} into {src}")
        unpack(commit, src)
        (home / "unpacked").write_text(commit + "\n")
    venv = src / ".venv"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        log(f"bench.compare: making {venv} (python -m venv; pip install -e, the current "
            "virtualenv's versions as constraints; about a minute, once)")
        shutil.rmtree(venv, ignore_errors=True)
        run([base_python(), "-m", "venv", str(venv)], "python -m venv")
        constraints = home / "constraints.txt"
        constraints.write_text("\n".join(freeze(Path(sys.executable))) + "\n")
        run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-c", str(constraints), "-e", str(src)], "pip install -e")
        stamp.write_text(commit + "\n")
    return Side("old", f"today (git {commit[:7]})", src, python)


def new_side(label: str) -> Side:
    """The current working tree, run by the interpreter running this comparison."""
    return Side("new", label, ROOT, Path(sys.executable))


def run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SideError(f"{what} failed (status {done.returncode}):\n"
                        f"{(done.stdout + done.stderr).strip()[-3000:]}")


def measuring_diff(commit: str) -> list[str]:
    """The measuring files (:data:`MEASURING`) that differ between ``commit`` and the tree."""
    out = git("diff", "--name-only", commit, "--", *MEASURING)
    return [line for line in out.splitlines() if line]


def worker_env() -> dict[str, str]:
    """The environment of a run: nothing that could put the other side's code first."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
            and not k.startswith("MAILFLOW_")}


def run_once(side: Side, harness_root: Path, key: str, scale: float, sink_kind: str,
             sink_binary: str | None, data_root: Path | None, timeout_factor: float
             ) -> dict[str, Any]:
    """One run of scenario ``key`` on ``side`` in a process of its own: its JSON record.

    The process's working directory is the side's tree, so the relay it starts
    (``python -m mailflow serve``) imports the side's code; the record's
    ``mailflow_file`` is checked to be in that tree.
    """
    command = [str(side.python), str(WORKER), "--root", str(side.root), "--harness-root",
               str(harness_root), "--scenario", key, "--scale", repr(scale), "--sink-kind",
               sink_kind, "--timeout-factor", repr(timeout_factor)]
    if sink_binary:
        command += ["--sink-binary", sink_binary]
    if data_root is not None:
        command += ["--data-root", str(data_root)]
    limit = 3600 * timeout_factor
    try:
        done = subprocess.run(command, cwd=side.root, env=worker_env(), capture_output=True,
                              text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise SideError(f"{side.label}: scenario {key} did not finish in {limit:.0f} s") \
            from None
    if done.returncode != 0:
        raise SideError(f"{side.label}: scenario {key} failed (status {done.returncode}):\n"
                        f"{done.stderr.strip()[-3000:]}")
    try:
        record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SideError(f"{side.label}: scenario {key} printed no result:\n"
                        f"{(done.stdout + done.stderr).strip()[-3000:]}") from None
    if not Path(record["mailflow_file"]).is_relative_to(side.root.resolve()):
        raise SideError(f"{side.label}: the run imported mailflow from "
                        f"{record['mailflow_file']}, not from {side.root}")
    return record
