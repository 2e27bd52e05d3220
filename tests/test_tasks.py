from pathlib import Path

import pytest

from gdsd_lightning.errors import UserError
from gdsd_lightning.tasks import get_task
from gdsd_lightning.tasks.countdown import evaluate_expression
from gdsd_lightning.tasks.splits import SPLIT_SIZES, split_path, write_splits

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO.parent / "shared" / "benchmarks"
SUDOKU = {"Puzzle": "3102200002100320", "Solution": "3142243142131324"}
COUNTDOWN = {"input": "30,100,93", "output": "23"}


def test_registry_and_unknown_task():
    assert get_task("sudoku").name == "sudoku"
    with pytest.raises(UserError, match="unknown task 'chess'; known tasks: countdown, gsm8k, humaneval, math, mbpp, sudoku"):
        get_task("chess")


@pytest.mark.parametrize("completion, reward", [
    ("3142243142131324", 1.0),
    ("<reasoning>easy</reasoning><answer>3142 2431 4213 1324</answer>", 1.0),
    ("3142243142131321", 7 / 8),          # last empty cell (index 15) wrong
    ("1111111111111111", 2 / 8),          # empty cells 7 and 12 hold a 1
    ("31422", 1 / 8),                      # cut short: padded with 0
    ("no digits at all", 0.0),
    ("", 0.0),
])
def test_sudoku_reward_is_fraction_of_empty_cells_right(completion, reward):
    task = get_task("sudoku")
    assert task.reward(completion, SUDOKU) == pytest.approx(reward)
    assert task.is_correct(completion, SUDOKU) == (reward == 1.0)


@pytest.mark.parametrize("completion, reward", [
    ("30-(100-93)", 1.0),
    ("93+30-100", 1.0),
    ("<answer>30 - 100 + 93</answer>", 1.0),
    ("30-(100-93) = 23", 1.0),
    ("30+100", 0.1),                      # well formed, wrong numbers
    ("30*100/93", 0.1),                   # right numbers, wrong value
    ("<answer>what</answer>", 0.1),       # tags present but no expression
    ("30-(100-93", 0.0),                  # unbalanced
    ("__import__('os').system('true')", 0.0),
    ("(30).__class__", 0.0),
    ("23", 0.1),
    ("", 0.0),
])
def test_countdown_reward(completion, reward):
    assert get_task("countdown").reward(completion, COUNTDOWN) == pytest.approx(reward)


def test_countdown_expression_parser_refuses_everything_but_arithmetic():
    assert evaluate_expression("(1+2)*3/4") == (2.25, [1, 2, 3, 4])
    for bad in ("1/0", "2**3", "x+1", "1.5+2", "-3+4", "[1]", "lambda: 1"):
        assert evaluate_expression(bad) is None, bad


def test_malformed_row_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"input": "1,2,3", "output": "6"}\n{"input": "1,2,3"}\n')
    with pytest.raises(UserError, match=r"broken.jsonl, line 2: malformed countdown row"):
        get_task("countdown").load(path)
    path.write_text('{"input": "1,2,3", "output": "6"}\nnot json\n')
    with pytest.raises(UserError, match=r"line 2: not valid JSON"):
        get_task("countdown").load(path)
    csv = tmp_path / "broken.csv"
    csv.write_text("Puzzle,Solution\n3102200002100320,3142243142131324\n3102200002100320,3142243142131325\n")
    with pytest.raises(UserError, match=r"broken.csv, line 3: .*not a valid 4x4 sudoku grid"):
        get_task("sudoku").load(csv)
    with pytest.raises(UserError, match="does not exist"):
        get_task("sudoku").load(tmp_path / "missing.csv")


@pytest.mark.skipif(not BENCHMARKS.is_dir(), reason="../shared/benchmarks not present")
def test_published_formats_load():
    sudoku = get_task("sudoku").load(BENCHMARKS / "4x4_test_sudoku.csv")
    countdown = get_task("countdown").load(BENCHMARKS / "countdown_cd3_test.jsonl")
    assert len(sudoku) == 500 and len(countdown) == 256
    assert all(get_task("sudoku").is_correct(ex["Solution"], ex) for ex in sudoku)


@pytest.mark.parametrize("name", ["sudoku", "countdown"])
def test_frozen_splits_are_reproduced_by_the_generator(tmp_path, name):
    write_splits(tmp_path, name)
    for split in SPLIT_SIZES:
        assert split_path(tmp_path, name, split).read_bytes() == split_path(REPO / "data", name, split).read_bytes()


@pytest.mark.parametrize("name", ["sudoku", "countdown"])
def test_frozen_splits_are_disjoint_and_valid(name):
    task = get_task(name)
    keys = {}
    for split, size in SPLIT_SIZES.items():
        examples = task.load(split_path(REPO / "data", name, split))
        assert len(examples) == size
        keys[split] = {task.key(ex) for ex in examples}
        assert all(task.is_correct(task.target(ex), ex) for ex in examples[:500])
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])


def test_chat_prompt_has_reasoning_and_answer_tags():
    messages = get_task("countdown").chat_messages(COUNTDOWN)
    assert messages[0]["role"] == "system" and "<answer>" in messages[0]["content"]
    assert "30, 100, 93" in messages[1]["content"] and "23" in messages[1]["content"]
