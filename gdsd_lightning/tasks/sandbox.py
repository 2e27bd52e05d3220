"""Run untrusted generated Python (code tasks) so that it can neither hang, harm the machine nor
forge its verdict.

`run_tests(program, tests, ...)` is the verdict the code tasks use: each test runs in the judge
(sandbox_judge.py), a trusted process the program never runs in; the program runs in a fresh
sandbox per test and only answers calls, with plain data checked by the judge. No secret exists
that the code could find and print: a test passes when the judge itself ran it to its end.
`run_python(source)` runs one script in the sandbox and reports how it ended (exit status,
output); it is no verdict on tests.

Protections of the sandbox, in layers (the active ones are logged once, see `isolation()`):
- always: a separate process, killed with SIGKILL on a wall-clock timeout (per test:
  `Limits.test_timeout_s`; per run: `Limits.timeout_s`); resource limits (address space, CPU
  seconds, file size, open files, processes, no core dumps); an environment holding only
  PATH/LANG/HOME; `python -I`; a private work dir removed afterwards; stdout/stderr discarded
  (tests) or kept in files capped by the file-size limit (scripts);
- started as root: the code runs as `nobody` (setpriv), so the process limit binds and files
  of other users (the judge's included) stay out of reach;
- where unprivileged user namespaces work (`unshare`): fresh user, mount, network and PID
  namespaces: no network at all (loopback is down), no capabilities, the judge out of sight, and
  every process the code started dies with the namespace's first process; and a root of its own
  (a read-only tmpfs holding `visible_paths`: the interpreter, its standard library without
  site-packages, setpriv, their shared libraries; a fresh /proc of its PID namespace; /dev/null,
  zero, full, random, urandom; a size-limited tmpfs work dir), the host's root detached;
- fallback where that root cannot be built (no ldd, pivot_root refused, an unknown architecture):
  the same namespaces with every host mount read-only, which stays READABLE, and the host's /proc
  (the log line says so).

Not covered: without namespaces a child that calls setsid() escapes the process-group kill.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).parent
JUDGE_SOURCE = (HERE / "sandbox_judge.py").read_text()
SETUP_SOURCE = (HERE / "sandbox_setup.py").read_text()
RUNNER_SOURCE = (HERE / "sandbox_runner.py").read_text()
NOBODY = 65534
CHECKS = ("not_plain", "exited", "base_exception", "protocol", "patched_builtins", "read_outside")  # sandbox_judge.py


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0    # the whole run: every test of one program, or one script
    test_timeout_s: float = 1.0   # each test, loading the program included (the releases' 1 s)
    memory_mb: int = 1024      # address space per process
    max_processes: int = 16
    max_file_mb: int = 16      # any file the code writes, its stdout and stderr included
    work_dir_mb: int = 64      # tmpfs size of the work dir (isolated mode)


@dataclass(frozen=True)
class Execution:
    """How one script ended."""

    passed: bool               # it exited with status 0 within the time limit
    outcome: str               # finished | error | timeout | killed by <signal> | judge error
    stdout: str
    stderr: str
    seconds: float


@dataclass(frozen=True)
class Verdict:
    """The judge's verdict on one program: per test whether it passed, and how it ended."""

    passed: list[bool]
    outcomes: list[str]        # passed | failed | timeout | sandbox error | judge error | a check's name
    details: list[str]
    checks: dict[str, bool] = field(default_factory=dict)   # which integrity checks fired

    @property
    def pass_rate(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


def run_tests(program: str, tests: list[str], limits: Limits = Limits(), context: str = "",
              candidate_names: tuple[str, ...] = (), setup: str = "") -> Verdict:
    """Judge `program` against each test (Python source run by the judge).

    context: trusted source run in the judge before each test (HumanEval: the prompt, so the
    test's helpers are the prompt's, not the completion's); candidate_names: names that always
    mean the candidate's (HumanEval: the entry point); setup: source run after the program in
    the sandbox (MBPP's test_setup_code; also tried as context)."""
    request = {"mode": "tests", "program": program, "tests": list(tests), "context": context,
               "candidate_names": list(candidate_names), "setup": setup, "runner_source": RUNNER_SOURCE}
    verdict = run_judge(request, limits, isolation())
    if "tests" not in verdict:
        reason = verdict["error"]
        print(f"[sandbox] judge error, every test scored as failed: {reason}", file=sys.stderr, flush=True)
        return Verdict([False] * len(tests), ["judge error"] * len(tests), [reason] * len(tests),
                       dict.fromkeys(CHECKS, False))
    results = verdict["tests"]
    for result in results:
        if result["outcome"] == "sandbox error":     # ours, not the candidate's: say so
            print(f"[sandbox] a sandbox did not start, its test scored as failed: {result['detail']}",
                  file=sys.stderr, flush=True)
    return Verdict([r["passed"] for r in results], [r["outcome"] for r in results],
                   [r["detail"] for r in results], verdict["checks"])


def run_python(source: str, limits: Limits = Limits()) -> Execution:
    """Run `source` as a script in the sandbox and report how it ended and what it printed (passed:
    exit status 0 in time). For running code under the sandbox's protections (its own tests probe
    them with it), never for judging it: a program can exit 0 before its tests ran; judge with
    `run_tests`."""
    return script(source, limits, isolation())


def script(source: str, limits: Limits, mode: "Isolation") -> Execution:
    verdict = run_judge({"mode": "script", "program": source}, limits, mode)
    if "outcome" not in verdict:
        return Execution(False, "judge error", "", verdict["error"], 0.0)
    return Execution(verdict["outcome"] == "finished", verdict["outcome"], verdict["stdout"], verdict["stderr"],
                     verdict["seconds"])


def run_judge(request: dict, limits: Limits, mode: "Isolation") -> dict:
    """Start the judge with `request`, wait at most the run's limit, kill everything it left."""
    request = {**request, "limits": asdict(limits), "isolation": asdict(mode), "setup_source": SETUP_SOURCE}
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", JUDGE_SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=err, start_new_session=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            preexec_fn=functools.partial(judge_limits, limits))
        try:
            out, _ = process.communicate(json.dumps(request).encode(), timeout=limits.timeout_s + JUDGE_SLACK_S)
        except subprocess.TimeoutExpired:
            out = b""
        kill_group(process.pid)      # also the sandboxes and whatever their code left behind
        process.wait()
        err.seek(0)
        stderr = err.read()[-2000:].decode("utf-8", "replace")
    try:
        return json.loads(out)
    except ValueError:
        return {"error": f"the judge gave no verdict (exit {process.returncode}): {stderr.strip()[-500:]}"}


JUDGE_SLACK_S = 2.0   # the judge's own start and clean-up, beyond the run's limit


def judge_limits(limits: Limits) -> None:
    """preexec_fn of the judge: it runs only trusted code, but within the run's bounds."""
    cpu = int(limits.timeout_s + JUDGE_SLACK_S) + 1
    for which, value in ((resource.RLIMIT_AS, 2 * limits.memory_mb << 20), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---- which protections this machine allows ------------------------------------------------
@dataclass(frozen=True)
class Isolation:
    python: str            # interpreter the code runs under
    prefix: tuple          # setpriv / unshare in front of it
    setpriv: str | None
    as_nobody: bool
    namespaces: bool
    own_root: bool = False      # a minimal root of its own (else, with namespaces: the host's, read-only)
    visible: tuple = ()         # what that root shows, read-only (`visible_paths`)

    def describe(self) -> str:
        layers = ["own process group + wall-clock kill", "rlimits (memory, cpu, file size, files, processes)",
                  "scrubbed environment", "verdicts by a separate judge process"]
        if self.as_nobody:
            layers.append("runs as nobody")
        if self.own_root:
            layers.append("user/mount/net/pid namespaces: a root holding only the interpreter, its standard "
                          "library and the work dir, its own /proc, no network, no capabilities")
        elif self.namespaces:
            layers.append("user/mount/net/pid namespaces: the host's filesystem read-only but READABLE (no root "
                          "of its own here), the host's /proc, no network, no capabilities")
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
        modes = [namespaced]
        visible = visible_paths(os.path.realpath(python), setpriv)
        if visible:
            modes.insert(0, replace(namespaced, python=os.path.realpath(python), own_root=True, visible=visible))
        for mode in modes:
            if script("print('ok')", Limits(timeout_s=30), mode).passed:
                return log(mode)
    return log(plain)


def visible_paths(python: str, setpriv: str) -> tuple:
    """What a sandbox's own root shows: `python`, its standard library (no site-packages), setpriv
    and the directories of the shared libraries they and the stdlib's extension modules load
    (found with ldd); () where ldd is missing or fails."""
    ldd = shutil.which("ldd")
    found = subprocess.run([python, "-I", "-S", "-c", "import json, sys; print(json.dumps(sys.path))"],
                           capture_output=True, text=True)
    if not ldd or found.returncode != 0:
        return ()
    library = [path for path in json.loads(found.stdout) if path and os.path.exists(path)]
    binaries = [python, os.path.realpath(setpriv)]
    extensions = [str(p) for path in library if os.path.isdir(path) for p in Path(path).glob("lib-dynload/*.so")]
    linked = subprocess.run([ldd, *binaries, *extensions], capture_output=True, text=True)
    if linked.returncode != 0:
        return ()
    shared = {os.path.dirname(word) for line in linked.stdout.splitlines() if not line.endswith(":")
              for word in line.split() if word.startswith("/")}
    return tuple(sorted({*binaries, *library, *shared}))


def log(mode: Isolation) -> Isolation:
    print(f"[sandbox] protections: {mode.describe()}", file=sys.stderr, flush=True)
    return mode


def world_executable(path: str) -> bool:
    """Can a user who is neither owner nor group member run `path` (every directory searchable)?"""
    path = Path(os.path.realpath(path))
    if not path.is_file() or not path.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)
