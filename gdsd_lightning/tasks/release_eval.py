"""Sudoku and countdown as the releases evaluate them: their evaluation prompts and their answer
extraction (evaluation only; the training rewards live in sudoku.py and countdown.py).

Two families of evaluation prompts exist (`eval.prompts`):
    gdsd  the GDSD and ESPO releases (eval/data_utils.py): sudoku with a worked example,
          countdown asking for the expression inside <answer></answer>
    d1    the d1 release and those built on it (SPG, wd1, d-OPSD; eval/sudoku.py, eval/countdown.py):
          sudoku without the example, countdown asking for \\boxed{}
Both put the instructions and the question in one user turn, render it with the chat template and
prefill the assistant turn with "<reasoning>". The completion is read as decoded with its special
tokens (the end-of-text tokens end an answer for the sudoku patterns).

Answer extraction (eval/parse_and_get_acc.py), from the task modules:
    sudoku     the same in every release: the first of five patterns that finds a non-empty answer
               (`sudoku.patterned_answer`), whitespace removed, cut or padded with '0' to 16
               characters; accuracy is pooled: correct empty cells / empty cells over the subset
    countdown  the last \\boxed{} (else the first closed <answer></answer>, else the whole text),
               LaTeX operators made Python ones, an `expr = number` cut to `expr`; correct when the
               integers in it are exactly the given numbers and its value is within 1e-5 of the target
               (`countdown.boxed_correct`). Without a \\boxed{...}, GDSD's script reads the answer tag
               and d1's the whole text: each family is scored by its own release's rule.
The countdown prompts are the tasks' training user turns: GDSD's evaluation prompt is d1's training
prompt word for word, d1's (eval/countdown.py) is d-OPSD's training prompt.
"""

from __future__ import annotations

from gdsd_lightning.tasks.countdown import Countdown, boxed_correct
from gdsd_lightning.tasks.sudoku import ANSWER_FORMAT as ANSWER_FORMAT_SUDOKU, D1_INSTRUCTIONS, filled_cells, \
    padded_grid, patterned_answer

PREFILL = "<reasoning>"
PROMPT_FAMILIES = ("gdsd", "d1")

_SUDOKU_RULES = """Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.
"""
_SUDOKU_IMPORTANT = ("Your solution must be a COMPLETE 16-character string with only the digits 1-4, "
                     "representing your final solved grid.\n")

# GDSD / ESPO eval/data_utils.py SUDOKU_SYSTEM_PROMPT: bold headings, rules ending in '.', a worked example
SUDOKU_PROMPT_GDSD = "\n" + _SUDOKU_RULES + """
**Rules:**
- Fill empty cells with digits 1-4.
- Each row must contain digits 1-4 exactly once.
- Each column must contain digits 1-4 exactly once.
- Each 2x2 box must contain digits 1-4 exactly once.

**Example:**
Puzzle: 0401002010030310
This puzzle grid looks like this:
0 4 | 0 1
0 0 | 2 0
----+----
1 0 | 0 3
0 3 | 1 0

Solution: 2431312412434312
The solved grid looks like this:
2 4 | 3 1
3 1 | 2 4
----+----
1 2 | 4 3
4 3 | 1 2

**Important:** """ + _SUDOKU_IMPORTANT + "\n" + ANSWER_FORMAT_SUDOKU

# d1 eval/sudoku.py SUDOKU_SYSTEM_PROMPT: the training prompt of d1 and d-OPSD, word for word
SUDOKU_PROMPT_D1 = D1_INSTRUCTIONS

# The training release whose countdown user turn each evaluation family's prompt is
COUNTDOWN_PROMPT_RELEASE = {"gdsd": "d1", "d1": "dopsd"}


def sudoku_user_turn(puzzle: str, family: str) -> str:
    """The user turn of the releases' sudoku evaluation prompt."""
    instructions = SUDOKU_PROMPT_GDSD if family == "gdsd" else SUDOKU_PROMPT_D1
    return f"{instructions}\n\nSolve the following Sudoku puzzle: {puzzle}\n"


def user_turn(task: str, example: dict, family: str) -> str:
    """The user turn for one example of the published sudoku (Puzzle) or countdown (input, output) file."""
    if family not in PROMPT_FAMILIES:
        raise ValueError(f"unknown evaluation prompt family {family!r}; use one of {PROMPT_FAMILIES}")
    if task == "sudoku":
        return sudoku_user_turn(example["Puzzle"], family)
    return Countdown("chat", COUNTDOWN_PROMPT_RELEASE[family]).question(example)


def prompt_text(tokenizer, task: str, example: dict, family: str) -> str:
    """The chat-templated prompt with the assistant turn prefilled with "<reasoning>"."""
    messages = [{"role": "user", "content": user_turn(task, example, family)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + PREFILL


# ---- sudoku -------------------------------------------------------------------------------
def sudoku_answer(completion: str) -> str:
    """The grid string the releases read: the first answer pattern with a non-empty group, whitespace
    removed, cut or padded with '0' to 16 characters ('' when no pattern matches)."""
    return padded_grid(patterned_answer(completion))


def sudoku_cells(completion: str, example: dict) -> tuple[int, int]:
    """(correct cells, empty cells) of one completion; accuracy pools both over the subset."""
    return filled_cells(patterned_answer(completion), example)


# ---- countdown ----------------------------------------------------------------------------
def countdown_correct(completion: str, example: dict, family: str) -> bool:
    """The countdown check of the release of prompt `family` on one completion of a row
    {"input": "a,b,c", "output": "t"}."""
    return boxed_correct(completion, *Countdown.problem(example), whole_if_unboxed=family == "d1")
