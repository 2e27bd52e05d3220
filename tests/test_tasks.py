import itertools
from pathlib import Path

import pytest

from gdsd_lightning.errors import UserError
from gdsd_lightning.tasks import get_task
from gdsd_lightning.tasks.countdown import arithmetic_value, in_order_solution
from gdsd_lightning.tasks.splits import SFT_SPLIT, split_path, split_sizes, write_splits

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO.parent / "shared" / "benchmarks"
SUDOKU = {"Puzzle": "3102200002100320", "Solution": "3142243142131324"}
COUNTDOWN = {"input": "30,100,93", "output": "23"}


def test_registry_and_unknown_task():
    assert get_task("sudoku").name == "sudoku"
    with pytest.raises(UserError, match="unknown task 'chess'; known tasks: countdown, gsm8k, humaneval, math, mbpp, sudoku"):
        get_task("chess")


# Each value by hand from the GDSD release's rules (gdsd/rewards.py:177-214 sudoku, :122-174
# countdown). SUDOKU's empty cells: 2, 5, 6, 7, 8, 11, 12, 15; its solution has 4 1 4 3 1 3 1 4 there.
@pytest.mark.parametrize("completion, reward", [
    ("<reasoning>easy</reasoning><answer>\n3142 2431\n4213 1324\n</answer>", 1.0),
    ("3142243142131324", 0.0),                                  # no tags: no answer
    ("<answer>3142243142131324", 0.0),                          # unclosed: no answer
    ("<answer>1111111111111111</answer><answer>3142243142131324</answer>", 1.0),   # the last closed one
    ("<answer>3142243142131324</answer><answer>1111111111111111</answer>", 2 / 8), # cells 7 and 12 hold a 1
    ("<answer>31422</answer>", 1 / 8),                          # cut short: padded with 0, cell 2 right
    ("<answer>31422431421313241111</answer>", 1.0),             # cut to 16 digits
    ("<answer>31\u0664224314213132\u00b2</answer>", 6 / 8),      # Arabic-Indic 4 and superscript 2 are
                                                                #   digits (str.isdigit) in cells 2 and 15
    ("<answer>no digits</answer>", 0.0),
    ("", 0.0),
])
def test_sudoku_reward_reads_the_last_closed_answer_tag(completion, reward):
    task = get_task("sudoku")
    assert task.reward(completion, SUDOKU) == pytest.approx(reward)
    assert task.is_correct(completion, SUDOKU) == (reward == 1.0)


@pytest.mark.parametrize("completion, reward", [
    ("3142243142131324", 1.0),                                  # plain: the whole completion is the answer
    ("3142 2431 4213 1321", 7 / 8),
    ("31422", 1 / 8),
    ("", 0.0),
])
def test_sudoku_plain_style_reads_the_bare_completion(completion, reward):
    assert get_task("sudoku", "plain").reward(completion, SUDOKU) == pytest.approx(reward)


@pytest.mark.parametrize("completion, accuracy", [
    ("<answer>\n3142243142131324\n</answer>", 1.0),
    ("</answer>3142243142131324", 1.0),                         # what follows a closing tag
    ("The grid is 3142243142131324.", 1.0),                     # a lone run of 16 digits
    ("<answer>3142 2431 4213 132x</answer>", 7 / 8),            # white space dropped, letters kept
    ("3142243142131324", 1.0),
    ("no answer", 0.0),
])
def test_sudoku_dopsd_gate_reads_the_answer_its_own_way(completion, accuracy):
    assert get_task("sudoku", "chat", "dopsd").accuracy(completion, SUDOKU) == pytest.approx(accuracy)


@pytest.mark.parametrize("completion, reward", [
    ("<answer>30-(100-93)</answer>", 1.0),
    ("<reasoning>\nhm\n</reasoning>\n<answer>\n93 - 100 + 30\n</answer>\n", 1.0),
    ("<answer>---(100-93)+30</answer>", 1.0),                   # unary minus, as Python reads it
    ("30-(100-93)", 0.0),                                       # no tags
    ("<answer>30-(100-93)", 0.0),                               # unclosed
    ("<answer>30-(100-93)=23</answer>", 0.1),                   # 23 is a number it must not use
    ("<answer>1+2</answer><answer>93-100+30</answer>", 1.0),     # the last closed tag
    ("<answer>93-100+30</answer><answer>1+2</answer>", 0.1),
    ("<answer>30 - 100 + 93.0</answer>", 0.1),                  # the 0 of 93.0 is a fifth number
    ("<answer>(100-93)**30</answer>", 0.1),                     # right numbers, wrong value
    ("<answer>93**100**30</answer>", 0.1),                      # a power too large to compute: a miss
    ("<answer>30(100-93)</answer>", 0.1),                       # a call, not arithmetic
    ("<answer>\u0663\u0660-(100-93)</answer>", 0.1),            # Arabic-Indic 30: counted, not evaluable
    ("<answer>what</answer>", 0.1),
    ("<answer></answer>", 0.1),
    ("", 0.0),
])
def test_countdown_reward_reads_the_last_closed_answer_tag(completion, reward):
    assert get_task("countdown").reward(completion, COUNTDOWN) == pytest.approx(reward)


def test_countdown_division_by_zero_and_python_arithmetic():
    task, row = get_task("countdown"), {"input": "2,0,5", "output": "5"}
    assert task.reward("<answer>5+2/0</answer>", row) == 0.1
    assert task.reward("<answer>5+0*2</answer>", row) == 1.0
    assert task.reward("<answer>5 + 0//2</answer>", row) == 1.0


@pytest.mark.parametrize("completion, reward", [
    ("30-(100-93)", 1.0),
    ("93+30-100", 1.0),
    ("30-(100-93) = 23", 0.0),            # '=' is not arithmetic: no format credit either
    ("30+100", 0.1),                      # an expression with the wrong numbers
    ("30*100/93", 0.1),                   # right numbers, wrong value
    ("23", 0.1),
    ("30-(100-93", 0.0),                  # not an expression
    ("__import__('os').system('true')", 0.0),
    ("(30).__class__", 0.0),
    ("", 0.0),
])
def test_countdown_plain_style_reads_the_bare_completion(completion, reward):
    assert get_task("countdown", "plain").reward(completion, COUNTDOWN) == pytest.approx(reward)


@pytest.mark.parametrize("numbers, target, solution", [
    ([92, 61, 91], 62, "(92+61)-91"),
    ([9, 7, 23], 39, "(9+7)+23"),           # + before -, left grouping first: one habit per problem
    ([24, 76, 69], 17, "(24-76)+69"),       # a negative step is Python arithmetic, as the reward's
    ([3, 96, 8], 36, "(3*96)/8"),
    ([8, 2, 96], 24, None),                 # 96/(8/2) needs another order
    ([18, 21, 6], 9, None),
])
def test_countdown_in_order_solution_keeps_the_prompt_order(numbers, target, solution):
    assert in_order_solution(tuple(numbers), target) == solution


def test_countdown_plain_target_is_the_in_order_solution_else_the_generated_one():
    task = get_task("countdown", "plain")
    in_order = {"input": "24,76,69", "output": "17", "solution": "69-(76-24)"}
    reordered = {"input": "18,21,6", "output": "9", "solution": "6+(21-18)"}
    assert task.target(in_order) == "(24-76)+69" and task.target(reordered) == "6+(21-18)"
    assert get_task("countdown").target(in_order) == "<answer>\n69-(76-24)\n</answer>"   # chat: the generator's


def test_countdown_dopsd_gate_reads_a_boxed_expression():
    task, row = get_task("countdown", "chat", "dopsd"), {"input": "2,3,4", "output": "5"}
    assert task.is_correct("<answer>\n\\boxed{2 \\times 4 - 3}\n</answer>", row)
    assert task.is_correct("so \\boxed{2*4-3 = 5}", row)               # the '=5' suffix is cut
    assert task.is_correct("4*2-3", row)                                # no \boxed: the whole text, which
    assert not task.is_correct("<answer>4*2-3</answer>", row)           # must then be the expression alone
    assert task.is_correct("<answer>2*4-3</answer> \\boxed{", row)      # an unclosed box: the first answer tag
    assert get_task("countdown").reward("<answer>\\boxed{2*4-3}</answer>", row) == 0.1   # GDSD: not arithmetic


def test_arithmetic_values_are_pythons():
    assert arithmetic_value("(1+2)*3/4") == 2.25
    assert arithmetic_value("2**3") == 8 and arithmetic_value("-3+4") == 1 and arithmetic_value("7//2") == 3
    assert arithmetic_value("1.5+2") == 3.5 and arithmetic_value(" 1+1") == 2
    assert arithmetic_value("-" * 999 + "3") == -3           # deeper than Python's recursion limit
    assert isinstance(arithmetic_value("(-8)**0.5"), complex)
    for bad in ("1/0", "2.5**1000", "x+1", "[1]", "()", "...", "2(3)", "9**9**9**9", "1+", ""):
        assert arithmetic_value(bad) is None, bad


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
    assert all(get_task("sudoku").is_correct(f"<answer>{ex['Solution']}</answer>", ex) for ex in sudoku)


@pytest.mark.parametrize("name", ["sudoku", "countdown"])
def test_frozen_splits_are_reproduced_by_the_generator(tmp_path, name):
    write_splits(tmp_path, name)
    for split in split_sizes(name):
        assert split_path(tmp_path, name, split).read_bytes() == split_path(REPO / "data", name, split).read_bytes()


@pytest.mark.parametrize("name", ["sudoku", "countdown"])
def test_frozen_splits_are_disjoint_and_valid(name):
    task = get_task(name)
    keys = {}
    for split, size in split_sizes(name).items():
        examples = task.load(split_path(REPO / "data", name, split))
        assert len(examples) == size
        keys[split] = {task.key(ex) for ex in examples}
        if split != SFT_SPLIT:                         # demonstrations may be wrong on purpose
            assert all(task.is_correct(task.target(ex), ex) for ex in examples[:500])
    assert all(not (keys[a] & keys[b]) for a, b in itertools.combinations(keys, 2))


def test_chat_prompts_are_the_releases_user_turns():
    """The instructions sit in the user turn, with no system turn, worded as each release words them."""
    messages = get_task("countdown").chat_messages(COUNTDOWN)
    assert [m["role"] for m in messages] == ["user"]
    assert messages[0]["content"] == (
        "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\n"
        "Using only the numbers [30, 100, 93], create an arithmetic expression that evaluates to exactly 23. "
        "Use every number exactly once. Use +, -, *, and / as needed. Put only the final expression inside "
        "<answer></answer> tags.")
    assert "You must use all numbers from the list" in get_task("countdown", "chat", "d1").question(COUNTDOWN)
    dopsd = get_task("countdown", "chat", "dopsd").question(COUNTDOWN)
    assert "inside \\boxed{} tags" in dopsd and dopsd.endswith("Numbers: [30, 100, 93]\nTarget: 23")
    sudoku = get_task("sudoku").question(SUDOKU)
    assert "- Each 2x2 box must contain digits 1-4 exactly once." in sudoku
    assert sudoku.endswith("</answer>\n\n\nNow solve this Sudoku puzzle: 3102200002100320\n")
    assert get_task("sudoku", "chat", "d1").question(SUDOKU).endswith("Solve the following Sudoku puzzle: 3102200002100320\n")
    assert get_task("sudoku", "plain").prompt(SUDOKU) == "3102200002100320\n"


def test_prompts_are_left_truncated_to_max_prompt_length():
    from omegaconf import OmegaConf

    from gdsd_lightning.generation import encode_prompts
    from tests.conftest import make_tiny

    policy, task = make_tiny("tiny-llada"), get_task("sudoku", "plain")
    examples = [SUDOKU, {"Puzzle": "12", "Solution": ""}]
    texts, ids, mask = encode_prompts(policy, task, examples, OmegaConf.create({"max_prompt_length": 5}))
    assert texts == ["3102200002100320\n", "12\n"]
    assert policy.tokenizer.decode(ids[0]) == "0320\n"                    # the last 5 tokens
    assert mask.tolist() == [[1] * 5, [0, 0, 1, 1, 1]] and policy.tokenizer.decode(ids[1, 2:]) == "12\n"
    _, whole, _ = encode_prompts(policy, task, examples, OmegaConf.create({"max_prompt_length": None}))
    assert whole.shape == (2, 17)


def test_countdown_reads_the_hub_rows_and_keeps_three_numbers():
    task = get_task("countdown")
    rows = [{"nums": [30, 100, 93], "target": 23}, {"nums": [1, 2, 3, 4], "target": 10}, {"nums": [5, 6, 7], "target": 18}]
    assert task.validated(enumerate(rows, start=1), "Countdown-Tasks-3to4", "row") == [
        {"input": "30,100,93", "output": "23"}, {"input": "5,6,7", "output": "18"}]
    assert task.reward("<answer>30-(100-93)</answer>", rows[0]) == 1.0          # a raw hub row scores too
    assert "Using only the numbers [30, 100, 93]" in task.question(rows[0])
    with pytest.raises(UserError, match="no test split of its own; set task.test_path to a JSONL, CSV or Parquet file"):
        task.load_hub("test")


def test_published_sudoku_csv_keeps_its_leading_zeros(tmp_path, monkeypatch):
    """The release's CSV is read by the `datasets` csv builder with text columns (a local copy here)."""
    from dataclasses import replace

    from gdsd_lightning import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    path = tmp_path / "4x4_sudoku_unique_puzzles.csv"
    path.write_text("Puzzle,Solution\n0140432014020000,2143432114323214\n3102200002100320,3142243142131324\n")
    task = get_task("sudoku")
    task.hub = replace(task.hub, data_files=str(path), train="train[:1]", val="train[-1:]")
    assert task.load_hub("train") == [{"Puzzle": "0140432014020000", "Solution": "2143432114323214"}]
    assert task.load_hub("val")[0]["Puzzle"] == "3102200002100320"


def test_null_data_dir_reads_the_published_data_set(monkeypatch):
    from omegaconf import OmegaConf

    from gdsd_lightning.data import load_split

    task = get_task("countdown")
    monkeypatch.setattr(task, "load_hub", lambda split: [{"split": split}])
    cfg = OmegaConf.create({"name": "countdown", "data_dir": None, "train_path": None})
    assert load_split(task, cfg, "train") == ([{"split": "train"}], "train")
    assert load_split(task, OmegaConf.merge(cfg, {"data_dir": "data"}), "test")[1] == "test"     # the generated file


def test_recipes_carry_the_releases_prompt_settings():
    from gdsd_lightning.experiment import load_experiment

    for name, length, release in (("gdsd_llada_gsm8k", 400, "gdsd"), ("gdsd_dream_countdown", 400, "gdsd"),
                                  ("espo_llada_math", 400, "gdsd"), ("diffu_grpo_llada_sudoku", 200, "gdsd"),
                                  ("spg_llada_gsm8k", 200, "gdsd"), ("dopsd_llada_countdown", 200, "dopsd")):
        cfg = load_experiment(name)
        assert (cfg.task.prompt_style, cfg.task.max_prompt_length, cfg.task.release) == ("chat", length, release), name
    assert load_experiment("gdsd_llada_sudoku").task.data_dir is None              # the published puzzles
    assert load_experiment("gdsd_tiny_sudoku").task.prompt_style == "plain"
