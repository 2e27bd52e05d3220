"""Code rewards as the GDSD release computes them (gdsd/rewards.py), each value worked out by hand
from its rule, and the canonical solutions passing the sandbox."""

import json
import time
from pathlib import Path

import pytest

from gdsd_lightning.errors import UserError
from gdsd_lightning.tasks import get_task
from gdsd_lightning.tasks.code import CODE_SYSTEM_PROMPT, code_block, code_format
from gdsd_lightning.tasks.sandbox import run_tests

MBPP_SAMPLE = Path(__file__).parent / "fixtures" / "mbpp_sample.jsonl"     # MBPP-format problems of our own
ADD = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def mbpp():
    return get_task("mbpp").load(MBPP_SAMPLE)


@pytest.mark.parametrize("completion, expected", [
    ("Here it is:\n```python\nx = 1\n```", 1.0),                 # prose, then one final block
    ("```python\nx = 1\n```\n", 1.0),                             # no prose; one newline may follow
    ("```python\nx = 1\n```\n\n", 0.0),                           # two may not
    ("```python\nx = 1\n``` done", 0.0),                          # the block must end the completion
    ("`x` is set:\n```python\nx = 1\n```", 1.0),                  # single backticks in the prose are fine
    ("see ``` here\n```python\nx = 1\n```", 0.0),                 # a ``` before the block
    ("one ```python\nx = 1\n``` two ```python\ny = 2\n```", 0.0),  # two blocks
    ("````python\nx = 1\n```", 0.0),                              # four backticks open no python block
    ("```python\nx = 1\n````", 0.0),                              # a backtick after the closing fence
    ("```py\nx = 1\n```", 0.0),                                   # the language is `python`
    ("```python x = 1\n```", 0.0),                                # a newline must follow `python`
    ("```python\nx = 1\n", 0.0),                                  # never closed
    ("just prose", 0.0),
    ("```python\n```", 1.0),                                      # empty code parses
    ("```python\n  x = 1\n```", 1.0),                             # parsed stripped
    ("```python\ndef f(:\n```", 0.5),                             # SyntaxError
    ("```python\nx = 1\n  y = 2\n```", 0.5),                      # IndentationError is a SyntaxError
    ("```python\nx" + ".y" * 100_000 + "\n```", 0.0),             # RecursionError: another exception
])
def test_format_reward_follows_the_release_rule(completion, expected):
    assert code_format(completion) == expected


def test_code_is_the_first_block_unstripped():
    assert code_block("a\n```python\n  x = 1\n```\nb ```python\ny\n```") == "  x = 1\n"
    assert code_block("```python\nnever closed") is None and code_block("no code") is None


def test_reward_is_format_plus_the_pass_rate_counted_only_at_format_1(mbpp):
    task, add = get_task("mbpp"), mbpp[0]                       # tests: add(1,2)==3, add(-1,1)==0, add(2,5)==7
    record = task.score(f"Sum:\n```python\n{ADD}```", add)
    assert (record["reward"], record["format"], record["pass_rate"], record["correct"]) == (2.0, 1.0, 1.0, True)
    positive = "```python\ndef add(a, b):\n    return abs(a) + abs(b)\n```"                # passes 2 of 3
    assert task.score(positive, add)["reward"] == pytest.approx(1.0 + 2 / 3)
    assert not task.is_correct(positive, add)
    assert task.score(f"```python\n{ADD}```\nDone.", add)["reward"] == 0.0         # format 0: tests not run
    assert task.score("```python\ndef add(a, b) return\n```", add)["reward"] == 0.5  # syntax error: format only
    indented = "```python\n  def add(a, b):\n      return a + b\n```"              # parses stripped, not as is
    assert task.score(indented, add)["reward"] == 1.0
    refused = f"```python\nimport os\n{ADD}```"                  # a name the release refuses to run
    assert task.score(refused, add)["reward"] == 1.0
    assert task.score(refused.replace("import os", "import math"), add)["reward"] == 2.0


def test_mbpp_canonical_solutions_of_the_local_sample_pass(mbpp):
    task = get_task("mbpp")
    assert [row["task_id"] for row in mbpp if not task.is_correct(task.target(row), row)] == []


def test_mbpp_setup_runs_after_the_program_and_may_use_its_classes(mbpp):
    tree = mbpp[1]                                                # setup builds trees from the solution's Node
    assert "Node(" in tree["test_setup_code"] and "class Node" in tree["code"]
    assert run_tests(tree["code"], tree["test_list"], setup=tree["test_setup_code"]).passed == [True] * 3
    before = run_tests(tree["test_setup_code"] + "\n" + tree["code"], tree["test_list"])   # setup first: NameError
    assert before.passed == [False] * 3


def test_code_prompts_are_the_releases(mbpp):
    task = get_task("mbpp")
    messages = task.chat_messages(mbpp[0])
    assert messages[0] == {"role": "system", "content": CODE_SYSTEM_PROMPT}
    assert messages[1]["content"] == "Write a function to add two numbers.\nTest cases: assert add(1, 2) == 3"
    assert "```" not in task.prompt(mbpp[0]) and code_format(task.target(mbpp[0])) == 1.0   # SFT target: format 1


SAMPLE = ("has_close_elements", "mean_absolute_deviation", "find_zero", "decode_cyclic", "sort_third", "fib4",
          "make_palindrome", "do_algebra")


def test_humaneval_canonical_solutions_pass_a_sample_and_completions_may_give_a_body():
    task = get_task("humaneval")
    rows = task.load_hub("test")
    problems = {p["entry_point"]: p for p in rows}
    assert len(rows) == 164
    assert [name for name in SAMPLE if not task.is_correct(task.target(problems[name]), problems[name])] == []
    first = problems["has_close_elements"]
    assert task.is_correct(f"The body:\n```python\n{first['canonical_solution']}```", first) is False  # indented: 0.5
    wrong = first["prompt"] + "    return False\n"
    assert task.score(f"```python\n{wrong}```", first)["reward"] == 1.0                                # format only


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_all_164():
    task = get_task("humaneval")
    problems = task.load_hub("test")
    start = time.monotonic()
    failed = [p["task_id"] for p in problems if not task.is_correct(task.target(p), p)]
    print(f"164 canonical HumanEval solutions judged in {time.monotonic() - start:.1f} s")
    assert failed == []


def test_the_fraction_of_rollout_completions_caught_by_a_check_reaches_tensorboard(tmp_path, monkeypatch):
    """A task whose first quarter of rollout completions an integrity check catches: every rollout
    logs rollout/integrity/not_plain = 2 / 8 (2 prompts x 4 generations), and summary.json counts them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gdsd_lightning import module
    from gdsd_lightning.commands.train import train
    from gdsd_lightning.experiment import load_experiment
    from gdsd_lightning.tasks.sudoku import Sudoku
    from tests.conftest import rl_overrides

    names = ("solve_rate", "integrity/not_plain")
    monkeypatch.setattr(Sudoku, "extra_metric_names", names)
    monkeypatch.setattr(Sudoku, "extra_metrics", lambda self, completion, example: dict.fromkeys(names, 0.0))
    scored = module.score

    def caught_first_quarter(task, completions, examples):
        records = scored(task, completions, examples)
        for i, record in enumerate(records):
            record["integrity/not_plain"] = float(i < len(records) // 4)
        return records

    monkeypatch.setattr(module, "score", caught_first_quarter)
    run_dir = train(load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 2, run_name="signal")))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    caught = [e.value for e in events.Scalars("rollout/integrity/not_plain")]
    assert caught and all(abs(v - 0.25) < 1e-6 for v in caught), caught
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["integrity"] == {"not_plain": 2 * summary["rollouts"]}     # completions caught over the run


def test_an_mbpp_function_named_like_a_builtin_is_the_candidates(mbpp):
    task = get_task("mbpp")
    row = {**mbpp[0], "code": "def max(a, b):\n    return a - b", "test_list": ["assert max(5, 3) == 2"]}
    assert task.is_correct(f"```python\n{row['code']}\n```", row)                      # builtin max(5, 3) is 5
    assert not task.is_correct("```python\ndef max(a, b):\n    return 0\n```", row)


@pytest.mark.slow
def test_mbpp_canonical_solutions_pass_on_the_500_test_problems():
    """Needs the hub data (google-research-datasets/mbpp, or its `datasets` cache); skipped without."""
    task = get_task("mbpp")
    try:
        rows = task.load_hub("test")
    except UserError as error:
        pytest.skip(str(error))
    failed = [row["task_id"] for row in rows if not task.is_correct(task.target(row), row)]
    print(f"MBPP test: {len(rows) - len(failed)} / {len(rows)} canonical solutions pass; failed: {failed}")
    assert len(rows) == 500 and len(failed) <= 1
