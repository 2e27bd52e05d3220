"""GSM8K, MATH, HumanEval and MBPP: gold answers score as correct on rows with the data sets' own
field names, the d1 rewards by hand, and hub loading failing fast offline."""

import time

import pytest

from gdsd_lightning import hub
from gdsd_lightning.errors import UserError
from gdsd_lightning.tasks import get_task
from gdsd_lightning.tasks.code import code_block

# Rows written for these tests in each data set's field layout (not copied from the data sets).
GSM8K_ROW = {"question": "Ann has 3 boxes of 12 pens and gives away 1,000 cents worth of pens. How many boxes?",
             "answer": "She has 3 boxes.\n3 * 12 = <<3*12=36>>36 pens.\n#### 3"}
MATH_ROW = {"problem": "What is $\\frac{2}{4}$ in lowest terms?",
            "solution": "Divide by two: $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$.", "level": "Level 1"}
MBPP_ROW = {"task_id": 1, "text": "Write a function to add two numbers.",
            "code": "def add(a, b):\n    return a + b",
            "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"],
            "test_setup_code": "", "challenge_test_list": []}


def test_gsm8k_gold_scores_full_d1_reward():
    task = get_task("gsm8k")
    gold = task.target(task.validate(GSM8K_ROW))
    assert gold == "<reasoning>\nShe has 3 boxes.\n3 * 12 = <<3*12=36>>36 pens.\n</reasoning>\n<answer>\n3\n</answer>\n"
    assert task.is_correct(gold, GSM8K_ROW)
    # 2 (correct) + 0.5 (integer) + 0.5 (strict) + 0.5 (soft) + 4 x 0.125 (xml count)
    assert task.reward(gold, GSM8K_ROW) == pytest.approx(4.0)
    wrong = gold.replace("\n3\n</answer>", "\n4\n</answer>")
    assert not task.is_correct(wrong, GSM8K_ROW) and task.reward(wrong, GSM8K_ROW) == pytest.approx(2.0)
    # no tags at all: the whole completion is the answer; 10 characters after </answer> cost 0.01 each in xml count
    assert task.is_correct("The answer is $3.", GSM8K_ROW)
    assert task.reward(gold + "0123456789", GSM8K_ROW) == pytest.approx(4.0 - 0.5 - 0.02)


def test_gsm8k_numbers_are_normalised():
    task = get_task("gsm8k")
    row = {"question": "q", "answer": "... #### 1,000"}
    assert task.is_correct("<answer>1000</answer>", row) and task.is_correct("<answer>$1,000.00</answer>", row)
    assert not task.is_correct("<answer>100</answer>", row)
    with pytest.raises(ValueError, match="####"):
        task.validate({"question": "q", "answer": "no marker"})


@pytest.mark.parametrize("answer, correct", [("\\frac{1}{2}", True), ("\\dfrac{1}{2}", True), ("0.5", True),
                                             ("\\frac{2}{4}", True), ("\\frac{1}{3}", False), ("x^{", False)])
def test_math_answers_checked_with_math_verify(answer, correct):
    task = get_task("math")
    row = task.validate(MATH_ROW)                  # no 'answer' field: taken from the solution's \boxed{}
    assert row["answer"] == "\\frac{1}{2}"
    completion = f"<reasoning>\nhalve\n</reasoning>\n<answer>\n\\boxed{{{answer}}}\n</answer>"
    assert task.is_correct(completion, row) == correct
    assert task.reward(completion, row) == pytest.approx(2.0 * correct + 0.5)


def test_math_gold_in_answer_format_and_format_reward():
    task = get_task("math")
    row = task.validate({**MATH_ROW, "answer": "\\frac{1}{2}"})
    assert task.is_correct(task.target(row), row)
    assert task.reward("\\boxed{\\frac12} without tags", row) == pytest.approx(2.0)
    assert task.reward("<answer>1/2</answer>", row) == pytest.approx(0.25)   # tags, no \boxed{}


def test_humaneval_canonical_solutions_pass_all_164():
    task = get_task("humaneval")
    problems = task.load_hub("test")
    assert len(problems) == 164
    failed = [p["task_id"] for p in problems if not task.is_correct(task.target(p), p)]
    assert failed == []


def test_humaneval_body_only_completion_and_wrong_solution():
    task = get_task("humaneval")
    problem = task.load_hub("test")[0]                    # has_close_elements
    body = problem["canonical_solution"]
    assert task.is_correct(f"<answer>\n```python\n{body}```\n</answer>", problem)
    wrong = problem["prompt"] + "    return False\n"
    assert not task.is_correct(f"```python\n{wrong}```", problem)
    assert task.reward(f"```python\n{wrong}```", problem) == 0.5           # format only
    with pytest.raises(UserError, match="only a test split"):
        task.load_hub("train")


def test_mbpp_pass_rate_reward():
    task = get_task("mbpp")
    row = task.validate(MBPP_ROW)
    assert task.is_correct(task.target(row), row) and task.reward(task.target(row), row) == 1.5
    positive_only = "```python\ndef add(a, b):\n    return abs(a) + abs(b)\n```"      # passes 2 of 3
    assert not task.is_correct(positive_only, row)
    assert task.reward(positive_only, row) == pytest.approx(2 / 3 + 0.5)
    assert task.reward("```python\ndef add(a, b) return\n```", row) == 0.0           # does not parse
    assert code_block("first ```python\nx = 1\n``` then ```python\ny = 2\n```") == "y = 2\n"


def test_local_parquet_and_jsonl_rows_name_their_position(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.Table.from_pylist([GSM8K_ROW, {"question": "q", "answer": "no gold"}]), path)
    with pytest.raises(UserError, match=r"gsm8k.parquet, line 2: malformed gsm8k row"):
        get_task("gsm8k").load(path)
    pq.write_table(pa.Table.from_pylist([GSM8K_ROW]), path)
    assert get_task("gsm8k").load(path)[0]["question"] == GSM8K_ROW["question"]


def test_hub_split_unreachable_fails_fast_with_a_sentence(monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    start = time.monotonic()
    with pytest.raises(UserError, match="hub is unreachable.*set task.test_path"):
        get_task("gsm8k").load_hub("test")
    assert time.monotonic() - start < 10


def test_a_code_completion_is_scored_with_one_run_per_test(monkeypatch):
    from gdsd_lightning.tasks import code

    runs = []
    real = code.run_python
    monkeypatch.setattr(code, "run_python", lambda source, limits: runs.append(source) or real(source, limits))
    task = get_task("mbpp")
    row = task.validate(MBPP_ROW)
    record = task.score(task.target(row), row)
    assert record == {"reward": 1.5, "accuracy": 1.0, "correct": True} and len(runs) == 3
