"""The judge: the trusted process that starts each sandbox and decides every verdict (see sandbox.py).

Stdlib only, passed to `python -I -S -c` by the host; stdin: one JSON request, stdout: one JSON
verdict. Untrusted code never runs in this process.

Mode "script": one sandbox runs `solution.py` to its end; reports exit status and output tails.

Mode "tests": per test, a fresh sandbox loads the program (then the setup code, if any) and
serves calls over a socket; the test itself runs here, in a namespace built from trusted source
only (`context`: HumanEval's prompt, MBPP's setup code). Each name the test reads that neither
the context nor the builtins define, and each of `candidate_names`, is a `Handle`: calling it
sends the arguments to the sandbox and returns the answer, which must be plain data
(numbers, strings, bytes, None and lists / tuples / dicts / sets of them) rebuilt here by a
restricted unpickler. A handle itself has no value: comparing it, testing its truth or doing
arithmetic with it fails the test. So the values a test compares were built by this process,
with its own builtins and helpers; nothing the completion defines or patches takes part.

A test passes when it runs to its end within `test_timeout_s` (loading the program included)
and no integrity check fired during it. Checks (each fails the test and is reported):
  not_plain      an answer that is not plain data, or a handle used as a value
  exited         the candidate's process ended during loading or a call (sys.exit, os._exit, crash)
  base_exception the candidate raised SystemExit / KeyboardInterrupt / another non-Exception
  protocol       a malformed or oversized message on the channel
  patched_builtins  (reported by the sandbox, so advisory only: it does not fail a test)
  read_outside   (advisory, reported by the sandbox) an open outside the work dir that found nothing
"""

import ast
import builtins
import ctypes
import io
import json
import os
import pickle
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

NOBODY = 65534
MAX_MESSAGE = 16 << 20            # bytes of one answer
OUTPUT_BYTES = 64 * 1024          # stdout / stderr tail kept in script mode
DETAIL_CHARS = 300
PLAIN_SCALARS = (int, float, complex, str, bytes, bool, type(None))
PLAIN_CONTAINERS = (list, tuple, set, frozenset, dict)
CHECKS = ("not_plain", "exited", "base_exception", "protocol", "patched_builtins", "read_outside")
ADVISORY = {"patched_builtins", "read_outside"}


class Integrity(BaseException):
    """An integrity check fired. A BaseException, so a test's `except Exception` cannot hide it."""

    def __init__(self, check: str, detail: str):
        super().__init__(f"{check}: {detail}")
        self.check = check


class TestTimeout(BaseException):
    pass


# ---- launching one sandbox -------------------------------------------------------------------
class Sandbox:
    """One run of the sandbox: setup (namespaces, files) then `python -I <entry>` inside it."""

    def __init__(self, request: dict, files: dict, entry: str, channel=None, stdout=None, stderr=None):
        limits, mode = request["limits"], request["isolation"]
        self.scratch = tempfile.mkdtemp(prefix="gdsd-sandbox-")
        work_dir = os.path.join(self.scratch, "work")
        os.mkdir(work_dir)
        if mode["as_nobody"]:
            os.chmod(self.scratch, 0o711)          # nobody may pass through to its work dir only
            os.chown(work_dir, NOBODY, NOBODY)
        level = "2" if mode["own_root"] else "1" if mode["namespaces"] else "0"     # see sandbox_setup.py
        command = [*mode["prefix"], mode["python"], "-I", "-S", "-c", request["setup_source"], level, work_dir,
                   str(limits["work_dir_mb"]), str(limits["max_processes"]), mode["setpriv"] or "", mode["python"],
                   entry]
        stdin = channel if channel is not None else subprocess.PIPE
        devnull = subprocess.DEVNULL
        self.process = subprocess.Popen(
            command, stdin=stdin, stdout=stdout or devnull, stderr=stderr or devnull, cwd=self.scratch,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work_dir},
            preexec_fn=lambda: apply_limits(limits, limits["test_timeout_s"] if channel is not None
                                            else limits["timeout_s"]))
        line = (json.dumps({"files": files, "visible": mode["visible"]}) + "\n").encode()
        if channel is None:
            try:
                self.process.stdin.write(line)
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        else:
            self.request_line = line

    def stop(self) -> None:
        """Kill it (with namespaces: every process it started dies with it) and remove its files."""
        try:
            self.process.kill()
        except ProcessLookupError:
            pass
        self.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


def apply_limits(limits: dict, seconds: float) -> None:
    """preexec_fn: limits inherited by everything the sandbox starts (processes: see setup)."""
    cpu = int(seconds) + 1
    for which, value in ((resource.RLIMIT_AS, limits["memory_mb"] << 20), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, limits["max_file_mb"] << 20), (resource.RLIMIT_NOFILE, 64),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))


def tail(file) -> str:
    file.seek(0, os.SEEK_END)
    file.seek(max(0, file.tell() - OUTPUT_BYTES))
    return file.read().decode("utf-8", "replace")


def run_script(request: dict) -> dict:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sandbox = Sandbox(request, {"solution.py": request["program"]}, "solution.py", stdout=out, stderr=err)
        start = time.monotonic()
        try:
            sandbox.process.wait(timeout=request["limits"]["timeout_s"])
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        returncode = sandbox.process.returncode
        sandbox.stop()
        seconds = time.monotonic() - start
        stdout, stderr = tail(out), tail(err)
    if timed_out:
        outcome = "timeout"
    elif returncode < 0:
        outcome = f"killed by {signal.Signals(-returncode).name}"
    else:
        outcome = "finished" if returncode == 0 else "error"
    return {"outcome": outcome, "returncode": returncode, "stdout": stdout, "stderr": stderr, "seconds": seconds}


# ---- the channel to the candidate --------------------------------------------------------------
class NotPlainData(pickle.UnpicklingError):
    pass


class PlainUnpickler(pickle.Unpickler):
    """Rebuilds plain data only: no class is looked up except `complex`, no persistent ids."""

    def find_class(self, module, name):
        if (module, name) == ("builtins", "complex"):
            return complex
        raise NotPlainData(f"{module}.{name} is not plain data")

    def persistent_load(self, pid):
        raise NotPlainData("a persistent id is not plain data")


def check_plain(value) -> None:
    """Every object reachable from `value` has exactly one of the plain types (subclasses fail)."""
    seen, stack = set(), [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in PLAIN_SCALARS:
            continue
        if kind not in PLAIN_CONTAINERS:
            raise Integrity("not_plain", f"an answer holds a {kind.__name__}")
        if id(item) in seen:
            continue
        seen.add(id(item))
        stack.extend(item.items() if kind is dict else item)   # dict: (key, value) tuples


class Channel:
    """Length-prefixed pickles over the socket to one sandbox; what comes back is untrusted."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.checks: set = set()

    def send(self, message) -> None:
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, protocol=5)
        pickler.persistent_id = lambda obj: obj.reference if isinstance(obj, Handle) else None
        pickler.dump(message)
        payload = buffer.getvalue()
        try:
            self.sock.sendall(struct.pack("!I", len(payload)) + payload)
        except OSError:
            self.fail("exited", "the candidate's process has ended")

    def receive(self) -> tuple:
        """The next message: a tuple whose first item names its kind."""
        header = self.read(4)
        (size,) = struct.unpack("!I", header)
        if size > MAX_MESSAGE:
            self.fail("protocol", f"a message of {size} bytes")
        try:
            message = PlainUnpickler(io.BytesIO(self.read(size))).load()
            check_plain(message)
        except Integrity as error:
            self.fail(error.check, str(error))
        except NotPlainData as error:
            self.fail("not_plain", str(error))
        except Exception as error:        # not a pickle at all
            self.fail("protocol", f"{type(error).__name__}: {error}")
        if type(message) is not tuple or not message or type(message[0]) is not str:
            self.fail("protocol", "a message that is not a (kind, ...) tuple")
        report = message[-1] if message[0] != "hello" else None        # (patched builtins, failed opens)
        if type(report) is tuple and len(report) == 2:
            if report[0] is True:
                self.checks.add("patched_builtins")
            if type(report[1]) is int and report[1] > 0:
                self.checks.add("read_outside")
        return message

    def read(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                self.fail("exited", "the candidate's process ended")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def fail(self, check: str, detail: str):
        self.checks.add(check)
        raise Integrity(check, detail)

    def call(self, reference: tuple, args: tuple, kwargs: dict):
        """Run reference(*args, **kwargs) in the sandbox; its answer as plain data."""
        self.send(("call", reference, args, kwargs))
        answer = self.receive()
        kind = answer[0]
        if kind == "value" and len(answer) == 3:
            return answer[1]
        if kind == "object" and len(answer) == 4 and type(answer[1]) is int and type(answer[2]) is str:
            return Handle(self, ("object", answer[1]), f"a {answer[2]} object of the candidate's")
        if kind == "raised" and len(answer) == 5 and type(answer[1]) is str and type(answer[2]) is str:
            raise candidate_error(self, answer[1], answer[2], answer[3] is True)
        if kind == "not plain" and len(answer) == 3 and type(answer[1]) is str:
            self.fail("not_plain", f"the candidate answered with a {answer[1]}")
        self.fail("protocol", f"an unexpected {kind!r} message")


def candidate_error(channel: Channel, name: str, message: str, is_exception: bool) -> BaseException:
    """The candidate raised: a builtin exception of the same name (so a test may catch it), else
    RuntimeError; SystemExit, KeyboardInterrupt and other non-Exceptions fire `base_exception`."""
    if not is_exception:
        channel.checks.add("base_exception")
        return Integrity("base_exception", f"the candidate raised {name}")
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:
            pass
    return RuntimeError(f"{name}: {message}")


class Handle:
    """A name or object that lives in the sandbox. It can be called or passed to a call; any
    use as a value (==, <, bool, len, iter, arithmetic, hash) fires `not_plain`."""

    def __init__(self, channel: Channel, reference: tuple, description: str):
        self._channel, self.reference, self._description = channel, reference, description

    def __call__(self, *args, **kwargs):
        return self._channel.call(self.reference, args, kwargs)

    def __repr__(self):
        return f"<{self._description}>"

    def _used_as_value(self, *args):
        self._channel.fail("not_plain", f"{self._description} was used as a value")


for _dunder in ("eq ne lt le gt ge bool len iter contains getitem hash index int float complex abs neg pos "
                "invert round add radd sub rsub mul rmul truediv rtruediv floordiv rfloordiv mod rmod pow rpow "
                "and rand or ror xor rxor lshift rlshift rshift rrshift matmul rmatmul").split():
    setattr(Handle, f"__{_dunder}__", Handle._used_as_value)


def free_names(source: str) -> set:
    return {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}


def run_tests(request: dict) -> dict:
    limits = request["limits"]
    deadline = time.monotonic() + limits["timeout_s"]
    files = {"solution.py": request["program"], "runner.py": request["runner_source"]}
    if request["setup"]:
        files["setup.py"] = request["setup"]
    results, checks = [], set()
    for test in request["tests"]:
        if time.monotonic() >= deadline:
            results.append({"passed": False, "outcome": "timeout", "detail": "the run's time was spent", "seconds": 0.0})
            continue
        result = run_test(request, files, test, deadline)
        results.append(result)
        checks |= result.pop("checks")
    return {"tests": results, "checks": {name: name in checks for name in CHECKS}}


def run_test(request: dict, files: dict, test: str, deadline: float) -> dict:
    """Fresh sandbox, program loaded, test run here under the per-test limit."""
    start = time.monotonic()
    ours, theirs = socket.socketpair()
    sandbox = Sandbox(request, files, "runner.py", channel=theirs)
    theirs.close()
    channel = Channel(ours)
    try:
        outcome, detail = boot(sandbox, channel, deadline)
        if outcome is None:
            outcome, detail = judge(request, channel, test, deadline)
    except TestTimeout:                               # the alarm rang as the test ended
        outcome, detail = "timeout", "at the end of the test"
    finally:
        sandbox.stop()
        ours.close()
    fired = channel.checks - ADVISORY
    if fired and outcome not in CHECKS:              # a check fired even though the test caught it
        outcome = sorted(fired)[0]
    return {"passed": outcome == "passed", "outcome": outcome, "detail": detail[:DETAIL_CHARS],
            "seconds": time.monotonic() - start, "checks": set(channel.checks)}


def boot(sandbox: Sandbox, channel: Channel, deadline: float) -> tuple:
    """Hand the sandbox its files and wait for its hello (before any candidate code runs, so a
    failure here is the sandbox's, not the candidate's: no check fires)."""
    try:
        channel.sock.settimeout(max(0.01, deadline - time.monotonic()))
        channel.sock.sendall(sandbox.request_line)
        hello = channel.receive()
        channel.sock.settimeout(None)
    except (OSError, Integrity) as error:
        channel.checks.clear()
        return "timeout" if isinstance(error, TimeoutError) else "sandbox error", str(error)
    return (None, "") if hello[0] == "hello" else ("sandbox error", repr(hello))


def judge(request: dict, channel: Channel, test: str, deadline: float) -> tuple:
    """Load the program in the sandbox, then run the test here; (outcome, detail)."""
    seconds = min(request["limits"]["test_timeout_s"], deadline - time.monotonic())
    if seconds <= 0:
        return "timeout", "no time left for this test"
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        channel.send(("load",))
        loaded = channel.receive()
        if loaded[0] == "raised" and len(loaded) == 5 and type(loaded[1]) is str and type(loaded[2]) is str:
            raise candidate_error(channel, loaded[1], loaded[2], loaded[3] is True)
        if loaded[0] != "loaded":
            channel.fail("protocol", f"an unexpected {loaded[0]!r} message")
        exec(compile(test, "test", "exec"), namespace(request, channel, test))
    except TestTimeout:
        return "timeout", f"over {seconds:.1f} s"
    except Integrity as error:
        return error.check, str(error)
    except BaseException as error:
        return "failed", f"{type(error).__name__}: {error}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return "passed", ""


def namespace(request: dict, channel: Channel, test: str) -> dict:
    """The test's globals: the trusted context (dropped whole if it fails here, e.g. MBPP setup
    code that needs the solution's classes: then it ran beside the program only), then a handle
    for each of `candidate_names` and for every other name the test reads that nothing defines."""
    names = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(request["context"], "context", "exec"), names)
    except Exception:
        names = {"__name__": "__main__", "__builtins__": builtins}
    undefined = {name for name in free_names(test) if name not in names and not hasattr(builtins, name)}
    for name in sorted(undefined | set(request["candidate_names"])):
        names[name] = Handle(channel, ("name", name), f"the candidate's {name}")
    return names


def raise_timeout(signum, frame):
    raise TestTimeout()


def main() -> None:
    verdict_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                     # anything the tests print goes to stderr, not into the verdict
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)         # PR_SET_DUMPABLE 0: a same-user process cannot ptrace or read us
    signal.signal(signal.SIGALRM, raise_timeout)
    request = json.loads(sys.stdin.read())
    verdict = run_script(request) if request["mode"] == "script" else run_tests(request)
    verdict_out.write(json.dumps(verdict))
    verdict_out.flush()


main()
