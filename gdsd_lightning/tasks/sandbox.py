"""Run untrusted generated Python (code tasks) so that it can neither hang nor harm the machine.

`run_python(source)` passes when the program runs to its end: every test's assert executed and
no exception. Protections, in layers (the active ones are logged once, see `protections()`):

- always: a separate process in its own process group, killed with SIGKILL on a wall-clock
  timeout; resource limits (address space, CPU seconds, file size, open files, processes, no
  core dumps); an environment holding only PATH/LANG/HOME; `python -I`; a private work dir
  removed afterwards; stdout/stderr go to files capped by the file-size limit; a secret marker
  printed after the program's last line, so `sys.exit(0)` / `os._exit(0)` before the tests ran
  is a failure, not a pass;
- started as root: the code runs as `nobody` (setpriv), so the process limit binds and files
  of other users stay out of reach;
- where unprivileged user namespaces work (`unshare`): fresh user, mount, network and PID
  namespaces: no network at all (loopback is down), every mount read-only except a size-limited
  tmpfs on the work dir, no capabilities, and every process the code started dies with the
  namespace's first process.

Not covered: code that inspects the runner's own stack frames can find the marker; without
namespaces a child that calls setsid() escapes the process-group kill.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SETUP_SOURCE = (Path(__file__).with_name("sandbox_setup.py")).read_text()
NOBODY = 65534
OUTPUT_BYTES = 64 * 1024   # stdout/stderr kept per run

RUNNER_SOURCE = '''\
import os, sys
def run():
    marker = sys.stdin.readline().strip()
    os.close(0)
    with open("solution.py") as f:
        code = compile(f.read(), "solution.py", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    os.write(1, ("\\n" + marker + "\\n").encode())
run()
'''


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_mb: int = 1024      # address space per process
    max_processes: int = 16
    max_file_mb: int = 16      # any file the code writes, its stdout and stderr included
    work_dir_mb: int = 64      # tmpfs size of the work dir (isolated mode)


@dataclass(frozen=True)
class Execution:
    passed: bool
    outcome: str               # passed | error | early exit | timeout | killed by <signal>
    stdout: str
    stderr: str
    seconds: float


def run_python(source: str, limits: Limits = Limits()) -> Execution:
    """Run `source` as a script in the sandbox; passed only if it reached its last line."""
    return execute(source, limits, isolation())


def execute(source: str, limits: Limits, mode: "Isolation") -> Execution:
    marker = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="gdsd-sandbox-") as scratch:
        work_dir, logs = Path(scratch, "work"), Path(scratch, "logs")
        work_dir.mkdir()
        logs.mkdir()
        if mode.as_nobody:
            os.chmod(scratch, 0o711)          # nobody may pass through to its work dir, not list logs
            os.chown(work_dir, NOBODY, NOBODY)
        command = [*mode.prefix, mode.python, "-I", "-c", SETUP_SOURCE, "1" if mode.namespaces else "0",
                   str(work_dir), str(limits.work_dir_mb), str(limits.max_processes),
                   mode.setpriv or "", mode.python]
        request = json.dumps({"files": {"solution.py": source, "runner.py": RUNNER_SOURCE}, "marker": marker})
        start = time.monotonic()
        with open(logs / "out", "w+b") as out, open(logs / "err", "w+b") as err:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=scratch, start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work_dir)},
                preexec_fn=functools.partial(apply_limits, limits))
            try:
                process.stdin.write(request.encode() + b"\n")
                process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                process.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            kill_group(process.pid)   # also reaps children left behind by a program that ended
            returncode = process.wait()
            seconds = time.monotonic() - start
            stdout, stderr = tail(out), tail(err)
    finished = marker in stdout
    if timed_out:
        outcome = "timeout"
    elif returncode < 0:
        outcome = f"killed by {signal.Signals(-returncode).name}"
    elif returncode != 0:
        outcome = "error"
    else:
        outcome = "passed" if finished else "early exit"
    return Execution(outcome == "passed", outcome, stdout.replace(marker, ""), stderr, seconds)


def apply_limits(limits: Limits) -> None:
    """preexec_fn: limits inherited by everything the sandbox starts (processes: see setup)."""
    cpu = int(limits.timeout_s) + 1
    for which, value in ((resource.RLIMIT_AS, limits.memory_mb << 20), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, limits.max_file_mb << 20), (resource.RLIMIT_NOFILE, 64),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tail(file) -> str:
    file.seek(0, os.SEEK_END)
    file.seek(max(0, file.tell() - OUTPUT_BYTES))
    return file.read().decode("utf-8", "replace")


# ---- which protections this machine allows ------------------------------------------------
@dataclass(frozen=True)
class Isolation:
    python: str            # interpreter the code runs under
    prefix: tuple          # setpriv / unshare in front of it
    setpriv: str | None
    as_nobody: bool
    namespaces: bool

    def describe(self) -> str:
        layers = ["own process group + wall-clock kill", "rlimits (memory, cpu, file size, files, processes)",
                  "scrubbed environment", "early-exit marker"]
        if self.as_nobody:
            layers.append("runs as nobody")
        if self.namespaces:
            layers.append("user/mount/net/pid namespaces: read-only filesystem, no network, no capabilities")
        else:
            layers.append("NO namespaces (unshare unavailable): filesystem and network are not isolated")
        return "; ".join(layers)


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """The strongest set of protections that works here, found by running a probe once."""
    setpriv, unshare = shutil.which("setpriv"), shutil.which("unshare")
    root = os.geteuid() == 0
    candidates = [sys.executable, getattr(sys, "_base_executable", sys.executable), "/usr/bin/python3",
                  shutil.which("python3") or ""]
    python = sys.executable
    drop = ()
    if root and setpriv:
        reachable = [p for p in candidates if p and world_executable(p)]
        if reachable:
            python = reachable[0]
            drop = (setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--")
    plain = Isolation(python, drop, setpriv, bool(drop), False)
    if unshare and setpriv:
        namespaced = Isolation(python, (*drop, unshare, "--map-root-user", "--net", "--mount", "--pid",
                                        "--fork", "--kill-child", "--"), setpriv, bool(drop), True)
        if execute("print('ok')", Limits(timeout_s=30), namespaced).passed:
            return log(namespaced)
    return log(plain)


def log(mode: Isolation) -> Isolation:
    print(f"[sandbox] protections: {mode.describe()}", file=sys.stderr, flush=True)
    return mode


def world_executable(path: str) -> bool:
    """Can a user who is neither owner nor group member run `path` (every directory searchable)?"""
    path = Path(os.path.realpath(path))
    if not path.is_file() or not path.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)
