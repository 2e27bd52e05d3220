"""Hostile completions for a HumanEval problem: each is scored incorrect within a bounded time,
nothing outside the sandbox changes and no process survives."""

import os
import socket
import subprocess
import time

import pytest

from gdsd_lightning.tasks import get_task
from gdsd_lightning.tasks.code import CodeTask
from gdsd_lightning.tasks.sandbox import Limits, isolation, run_python

TIMEOUT = 3.0
needs_namespaces = pytest.mark.skipif(not isolation().namespaces,
                                      reason="no user namespaces here: filesystem and network are not isolated")


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch):
    monkeypatch.setattr(CodeTask, "limits", Limits(timeout_s=TIMEOUT))


@pytest.fixture(scope="module")
def problem():
    return get_task("humaneval").load_hub("test")[0]          # has_close_elements


def judge(problem, body: str) -> tuple[bool, float]:
    """Score `body` as a completion that defines the entry point; returns (correct, seconds)."""
    start = time.monotonic()
    correct = get_task("humaneval").is_correct(f"```python\n{body}\n```", problem)
    return correct, time.monotonic() - start


def survivors(tag: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", tag], capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if "pgrep" not in line]


FINE = "def has_close_elements(numbers, threshold):\n    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"


def test_a_correct_solution_passes(problem):
    assert judge(problem, FINE)[0]


@pytest.mark.parametrize("name, body", [
    ("infinite loop", "while True:\n    pass"),
    ("sleep at import", "import time\ntime.sleep(3600)"),
    ("huge allocation", "x = bytearray(64 * 2**30)"),
    ("early sys.exit(0)", "import sys\nsys.exit(0)"),
    ("early os._exit(0)", FINE + "import os\nos._exit(0)"),
    ("exit from an atexit-free thread", FINE + "import os, threading\nthreading.Thread(target=os._exit, args=(0,)).start()\nimport time\ntime.sleep(5)"),
    ("fork storm", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
    ("exit code 0 forced after a failed test", "import atexit, os\natexit.register(os._exit, 0)\n"
                                               "def has_close_elements(numbers, threshold):\n    return True"),
])
def test_hostile_completion_is_incorrect_and_bounded(problem, name, body):
    correct, seconds = judge(problem, body)
    assert not correct, name
    assert seconds < TIMEOUT + 5, f"{name} took {seconds:.1f}s"
    assert survivors("runner.py") == []


def test_child_processes_do_not_survive(problem):
    body = ("import subprocess, os\nsubprocess.Popen(['sleep', '987.654'])\n"
            "if os.fork() == 0:\n    os.setsid()\n    os.execvp('sleep', ['sleep', '987.655'])\n" + FINE)
    judge(problem, body)
    time.sleep(0.5)
    assert survivors("sleep 987.65") == []


@needs_namespaces
def test_files_outside_the_sandbox_are_untouched(problem, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o777)
    os.chmod(victim, 0o666)
    planted = tmp_path / "planted.txt"
    body = (f"import os, shutil\nos.remove({str(victim)!r})\n") + FINE
    assert not judge(problem, body)[0]
    body = f"open({str(planted)!r}, 'w').write('x')\n" + FINE
    assert not judge(problem, body)[0]
    body = f"open('/tmp/gdsd-planted-{os.getpid()}', 'w').write('x')\n" + FINE
    assert not judge(problem, body)[0]
    assert victim.read_text() == "keep me" and not planted.exists()
    assert not os.path.exists(f"/tmp/gdsd-planted-{os.getpid()}")


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("GDSD_TEST_SECRET", "hunter2-secret")
    result = run_python("import os\nprint(dict(os.environ))\nprint(open('/proc/self/environ','rb').read())")
    assert result.passed and "hunter2-secret" not in result.stdout


@needs_namespaces
def test_no_network_not_even_loopback(problem):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    body = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            f"s.sendall(b'leak')\n") + FINE
    assert not judge(problem, body)[0]
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()
    assert "Network is unreachable" in run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}))").stderr


def test_output_flood_is_capped():
    result = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", Limits(timeout_s=5))
    assert not result.passed and result.outcome in ("killed by SIGXFSZ", "error", "timeout")
    assert len(result.stdout) <= 64 * 1024


def test_exit_code_and_marker_decide_the_outcome():
    assert run_python("print('fine')").outcome == "passed"
    assert run_python("raise ValueError('no')").outcome == "error"
    assert run_python("import os\nos._exit(0)").outcome == "early exit"
    assert run_python("import time\ntime.sleep(60)", Limits(timeout_s=1)).outcome == "timeout"
