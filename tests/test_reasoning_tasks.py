"""GSM8K and MATH: gold answers score as correct on rows with the data sets' own field names, the
releases' rewards by hand, and hub loading failing fast offline (code tasks: test_code_rewards.py)."""

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


# GSM8K values by hand from the GDSD release's five rewards (gdsd/rewards.py:242-303) and d1's
# (diffu-grpo/reward_func.py:6-79): xml count + soft + strict + integer + correctness.
def test_gsm8k_gold_scores_by_the_gdsd_and_d1_rules():
    gdsd, d1 = get_task("gsm8k"), get_task("gsm8k", "chat", "d1")
    gold = gdsd.target(gdsd.validate(GSM8K_ROW))
    assert gold == "<reasoning>\nShe has 3 boxes.\n3 * 12 = <<3*12=36>>36 pens.\n</reasoning>\n<answer>\n3\n</answer>\n"
    assert gdsd.is_correct(gold, GSM8K_ROW) and d1.is_correct(gold, GSM8K_ROW)
    # GDSD: the 12 characters after "\n<answer>\n" ("3\n</answer>\n") cost 0.001 each in xml count
    assert gdsd.reward(gold, GSM8K_ROW) == pytest.approx(4 * 0.125 - 0.012 + 0.5 + 0.5 + 0.5 + 2.0)
    # d1: nothing follows "\n</answer>\n"; its formats need one-line reasoning (no re.DOTALL)
    assert d1.reward(gold, GSM8K_ROW) == pytest.approx(4 * 0.125 + 0.5 + 2.0)
    one_line = "<reasoning>\n3 boxes\n</reasoning>\n<answer>\n3\n</answer>\n"     # strict, not soft: "\n" after <reasoning>
    assert d1.reward(one_line, GSM8K_ROW) == pytest.approx(0.5 + 0.5 + 0.5 + 2.0)
    assert d1.reward("<reasoning>x</reasoning>\n<answer>3</answer>", GSM8K_ROW) == pytest.approx(0.5 + 0.5 + 2.0)
    # 10 characters after the gold: GDSD charges 22 + 10 of them; strict format lost
    assert gdsd.reward(gold + "0123456789", GSM8K_ROW) == pytest.approx(0.5 - 0.022 - 0.010 + 0.5 + 0.5 + 2.0)
    assert gdsd.reward(gold.replace("\n3\n</answer>", "\n4\n</answer>"), GSM8K_ROW) == pytest.approx(1.988)


@pytest.mark.parametrize("completion, reward", [
    ("<answer>3</answer>", 0.5 + 2.0),                                  # integer + correct, no format
    ("The answer is 3", 0.0),                                           # untagged: the whole text is the answer
    ("3", 0.5 + 2.0),
    ("<reasoning>x</reasoning> <answer>3</answer>", 0.5 + 0.5 + 2.0),    # soft format
    ("so <reasoning>x</reasoning><answer>3</answer>", 0.5 + 2.0),        # soft format is anchored at the start
    ("<answer>1</answer><answer> 3 </answer>", 0.5 + 2.0),              # the last tag, stripped
    ("<answer>3", 0.5 + 2.0),                                           # unclosed: still read
    ("<answer>$3</answer>", 0.0),                                       # exact match only
    ("<answer>\u0663</answer>", 0.5),                                  # Arabic-Indic 3: a digit, not the gold
])
def test_gsm8k_reward_cases(completion, reward):
    assert get_task("gsm8k").reward(completion, GSM8K_ROW) == pytest.approx(reward)


def test_gsm8k_gold_is_the_text_after_the_marker():
    row = {"question": "q", "answer": "... #### 1,000"}
    assert get_task("gsm8k").is_correct("<answer>1,000</answer>", row)
    assert not get_task("gsm8k").is_correct("<answer>1000</answer>", row)
    twice = {"question": "q", "answer": "a #### 5 #### 6"}
    assert get_task("gsm8k").gold(twice) == "5 #### 6" and get_task("gsm8k", "chat", "d1").gold(twice) == "5"
    with pytest.raises(ValueError, match="####"):
        get_task("gsm8k").validate({"question": "q", "answer": "no marker"})


def test_gsm8k_dopsd_gate_reads_a_number():
    task, row = get_task("gsm8k", "chat", "dopsd"), {"question": "q", "answer": "#### 72"}
    assert "\\boxed{...}" in task.question(row)
    assert task.is_correct("so \\boxed{72}", row) and task.is_correct("\\boxed{}\\boxed{72.0 apples}", row)
    assert task.is_correct("<answer>\nSo 5 and then 72\n</answer>", row)   # the last number of the tag
    assert not task.is_correct("\\boxed{7}2", row) and task.reward("\\boxed{72}", row) == 1.0


# MATH values by hand from the GDSD release (gdsd/rewards.py:224-239, utils/math500_utils.py): 2.0 when
# the boxed answer inside the first answer tag normalises to the solution's, + 0.5 x (tag + box).
@pytest.mark.parametrize("completion, reward", [
    ("<answer>\n\\boxed{\\frac12}\n</answer>", 3.0),                 # \frac12 -> \frac{1}{2}
    ("<answer>\\boxed{0.5}</answer>", 3.0),                             # 0.5 -> \frac{1}{2}
    ("<answer>\\boxed{\\dfrac{1}{2}}</answer>", 3.0),
    ("<answer>\\boxed{\\frac{2}{4}}</answer>", 1.0),                   # not MATH-equal (math-verify-equal)
    ("\\boxed{\\frac12} without tags", 2.0 + 0.5 * (0 + 1)),
    ("<answer>1/2</answer>", 2.0 + 0.5 * (1 + 0.5)),                      # no box: the tag's text, 1/2 -> \frac
    ("<answer>\\boxed{\\frac12}", 3.0),                                 # unclosed tag counts
    ("<answer>\\boxed{3}</answer><answer>\\boxed{\\frac12}</answer>", 1.0),   # the first tag
    ("<answer>\\boxed{\\boxed{\\frac12}}</answer>", 3.0),               # nested: the last \boxed
    ("<answer>\\fbox{\\frac12}</answer>", 0.5 * (1 + 0.5)),              # \fbox kept: no match, no box credit
    ("<answer>\\boxed 1/2$ done</answer>", 3.0),                          # "\boxed " up to the "$"
    ("<answer>\\boxed{\\frac12</answer>", 1.0),                          # unbalanced: no answer
    ("", 0.25),
])
def test_math_reward_is_the_gdsd_rule(completion, reward):
    row = get_task("math").validate(MATH_ROW)
    assert get_task("math").reward(completion, row) == pytest.approx(reward)


def test_math_d1_rule_and_strict_normalisation():
    from gdsd_lightning.tasks.math_answers import is_equiv

    task, row = get_task("math", "chat", "d1"), get_task("math").validate(MATH_ROW)
    # d1: the last \boxed of the whole completion; its box check never fires ("\b" is a backspace)
    assert task.reward("<answer>\n\\boxed{\\frac12}\n</answer>", row) == pytest.approx(2.0 + 0.5 * (1 + 0.5))
    assert task.reward("<answer>\\boxed{3}</answer><answer>\\boxed{\\frac12}</answer>", row) == pytest.approx(2.75)
    # a second "\text{ " or a non-integer a/b: MATH's code raises, d1 then compares the raw strings
    assert is_equiv("\\text{ a}\\text{ b}", "\\text{ a}\\text{ c}")
    assert not is_equiv("\\text{ a}\\text{ b}", "\\text{ a}\\text{ c}", strict=True)
    assert is_equiv("x/2", "x/ 2") and not is_equiv("x/2", "x/ 2", strict=True)
    assert is_equiv(None, None) and not is_equiv("1", None)


def test_math_dopsd_gate_and_the_accuracy_checker():
    row = get_task("math").validate(MATH_ROW)
    dopsd = get_task("math", "chat", "dopsd")
    assert dopsd.is_correct("<reasoning>\nhalve\n</reasoning>\n<answer>\n\\boxed{\\frac12}\n</answer>", row)
    assert not dopsd.is_correct("<answer>\\frac{1}{2}</answer>", row)   # no box: the whole completion
    assert dopsd.is_correct("<answer>\\frac12</answer> \\boxed{", row)   # unbalanced box: the answer tag
    slash = {"problem": "p", "solution": "so \\boxed{x/2}"}
    assert not dopsd.is_correct("\\boxed{x/ 2}", slash)                  # strict: x/2 raises, raw strings differ
    assert get_task("math").reward("\\boxed{x/ 2}", slash) == 2.0 + 0.5 * (0 + 1)   # lenient: spaces dropped
    gdsd = get_task("math")
    assert gdsd.is_correct("<answer>\\boxed{\\frac{2}{4}}</answer>", row)   # accuracy: math-verify
    assert not gdsd.is_correct("<answer>\\boxed{\\frac{1}{3}}</answer>", row)


def test_math_gold_from_the_solution_box():
    task = get_task("math")
    row = task.validate(MATH_ROW)                  # no 'answer' field: taken from the solution's \boxed{}
    assert row["answer"] == "\\frac{1}{2}"
    assert task.is_correct(task.target(row), row) and task.reward(task.target(row), row) == 3.0
    with pytest.raises(ValueError, match="no 'answer'"):
        task.validate({"problem": "p", "solution": "no box"})


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
