"""GSM8K and MATH: gold answers score as correct on rows with the data sets' own field names, the
d1 rewards by hand, and hub loading failing fast offline (code tasks: test_code_rewards.py)."""

import time

import pytest

from gdsd_lightning import hub
from gdsd_lightning.errors import UserError
from gdsd_lightning.tasks import get_task

# Rows written for these tests in each data set's field layout (not copied from the data sets).
GSM8K_ROW = {"question": "Ann has 3 boxes of 12 pens and gives away 1,000 cents worth of pens. How many boxes?",
             "answer": "She has 3 boxes.\n3 * 12 = <<3*12=36>>36 pens.\n#### 3"}
MATH_ROW = {"problem": "What is $\\frac{2}{4}$ in lowest terms?",
            "solution": "Divide by two: $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$.", "level": "Level 1"}


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
