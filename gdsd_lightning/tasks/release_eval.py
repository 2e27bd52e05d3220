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

Answer extraction, the same in every release (eval/parse_and_get_acc.py):
    sudoku     the first of five patterns that finds a non-empty answer (`SUDOKU_ANSWER_PATTERNS`),
               whitespace removed, cut or padded with '0' to 16 characters; accuracy is pooled:
               correct empty cells / empty cells over the whole subset
    countdown  the last \\boxed{} (else the first closed <answer></answer>, else the whole text),
               LaTeX operators made Python ones, an `expr = number` cut to `expr`; correct when the
               integers in it are exactly the given numbers and its value is within 1e-5 of the target
"""

from __future__ import annotations

import ast
import operator
import re

from gdsd_lightning.tasks.base import ANSWER_FORMAT
from gdsd_lightning.tasks.sudoku import ANSWER_FORMAT as ANSWER_FORMAT_SUDOKU, D1_INSTRUCTIONS

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

# d1 eval/countdown.py CTD_SYSTEM_PROMPT (the answer format follows the example without a separator)
COUNTDOWN_PROMPT_D1 = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the provided "
    "target number. You may use the operations +, -, *, and / as needed, but each number must be used exactly "
    "once. Think step-by-step. After reasoning, provide only your final expression inside \\boxed{} tags without "
    "including an equals sign or the target number. For example: \\boxed{a + b * c}Respond in the following "
    "format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>"
)


def sudoku_user_turn(puzzle: str, family: str) -> str:
    """The user turn of the releases' sudoku evaluation prompt."""
    instructions = SUDOKU_PROMPT_GDSD if family == "gdsd" else SUDOKU_PROMPT_D1
    return f"{instructions}\n\nSolve the following Sudoku puzzle: {puzzle}\n"


def countdown_user_turn(numbers: list[int], target: int, family: str) -> str:
    """The user turn of the releases' countdown evaluation prompt (numbers as a Python list)."""
    if family == "d1":
        return f"{COUNTDOWN_PROMPT_D1}\n\nNumbers: {numbers}\nTarget: {target}"
    return (f"{ANSWER_FORMAT}\nUsing only the numbers {numbers}, create an arithmetic expression that "
            f"evaluates to exactly {target}. You must use all numbers from the list, and each number must be used "
            "exactly once. You may use the operations +, -, *, and / as needed. After reasoning, provide only your "
            "final expression inside <answer></answer> tags without including an equals sign or the target number. "
            "For example, if the numbers are [2, 3, 4] and the target is 5, a valid answer is: "
            "<answer>\n2*4-3\n</answer>")


def user_turn(task: str, example: dict, family: str) -> str:
    """The user turn for one example of the published sudoku (Puzzle) or countdown (input, output) file."""
    if family not in PROMPT_FAMILIES:
        raise ValueError(f"unknown evaluation prompt family {family!r}; use one of {PROMPT_FAMILIES}")
    if task == "sudoku":
        return sudoku_user_turn(example["Puzzle"], family)
    return countdown_user_turn([int(x) for x in example["input"].split(",")], int(example["output"]), family)


def prompt_text(tokenizer, task: str, example: dict, family: str) -> str:
    """The chat-templated prompt with the assistant turn prefilled with "<reasoning>"."""
    messages = [{"role": "user", "content": user_turn(task, example, family)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + PREFILL


# ---- sudoku -------------------------------------------------------------------------------
_END = r"(?:<\|eot_id\|>|<\|endoftext\|>"   # LLaDA's and Dream's end tokens, as decoded
SUDOKU_ANSWER_PATTERNS = tuple(re.compile(p, re.S) for p in (
    r"<answer>.*?```\s*([\d\s]+)```",            # digits in a code fence inside the answer
    r"<answer>(.*?)" + _END + r"|</answer>)",      # the answer up to its closing tag or an end token
    r"</answer>\s*(.*?)" + _END + r"|$)",          # text after a stray closing tag
    r".*?(\d{16})\s*</answer>",                   # 16 digits right before a closing tag
    r"\b(\d{16})\b",                              # any 16-digit word
))


def sudoku_answer(completion: str) -> str:
    """The grid string the releases read: the first pattern with a non-empty group, whitespace
    removed, cut or padded with '0' to 16 characters ('' when no pattern matches)."""
    for pattern in SUDOKU_ANSWER_PATTERNS:
        found = pattern.search(completion)
        if found and found.group(1).strip():
            answer = re.sub(r"\s", "", found.group(1))
            return answer[:16].ljust(16, "0")
    return ""


def sudoku_cells(completion: str, example: dict) -> tuple[int, int]:
    """(correct cells, empty cells) of one completion; accuracy pools both over the subset."""
    answer, puzzle, solution = sudoku_answer(completion), example["Puzzle"], example["Solution"]
    empty = [i for i, cell in enumerate(puzzle) if cell == "0"]
    correct = sum(answer[i] == solution[i] for i in empty) if answer else 0
    return correct, len(empty)


# ---- countdown ----------------------------------------------------------------------------
EQUATION = re.compile(r"([0-9+\-*/() ]+)=[0-9. ]+")
ALLOWED_CHARACTERS = re.compile(r"^[\d+\-*/().\s]+$")
CLOSED_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPONENT = 1000     # a larger power is treated as not evaluable (Python would spend minutes on it)


def last_boxed(text: str) -> str | None:
    """The releases' boxed answer: after the last "\\boxed " up to a '$' when the text has one, else
    the brace-balanced content of the last "\\boxed{...}"; None when there is none (an \\fbox or
    unbalanced braces count as none)."""
    if "\\boxed " in text:
        return text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0 or not text.startswith("\\boxed{", start):
        return None
    depth = 0
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if text[end] == "}" and depth == 0:
            return text[start + len("\\boxed{"):end]
    return None


def countdown_expression(completion: str) -> str:
    """The expression the releases score: boxed first, else the first closed answer tag, else the
    whole completion; \\div, \\times and \\cdot made / * *; `expr = number` cut to `expr`."""
    expression = last_boxed(completion)
    if expression is None:
        tagged = CLOSED_ANSWER.search(completion)
        expression = tagged.group(1).strip() if tagged else completion
    expression = expression.replace(r"\div", "/").replace(r"\times", "*").replace(r"\cdot", "*")
    equation = EQUATION.search(expression)
    return equation.group(1).strip() if equation else expression


def expression_value(text: str) -> complex:
    """The value Python's arithmetic gives `text` (digits, + - * / ( ) . and whitespace only: ints,
    floats, ** and // included; a complex number from a fractional power of a negative one), or inf
    when it is not such an expression or cannot be evaluated; parsed with `ast`, never `eval`."""
    if not ALLOWED_CHARACTERS.match(text):
        return float("inf")

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise OverflowError
            return _BINARY[type(node.op)](left, right)
        raise ValueError(type(node).__name__)

    try:
        return value(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, TypeError, ArithmeticError, RecursionError):
        return float("inf")


def countdown_correct(completion: str, example: dict) -> bool:
    """The releases' countdown check on one completion of a row {"input": "a,b,c", "output": "t"}."""
    expression = countdown_expression(completion)
    numbers = sorted(int(x) for x in example["input"].split(","))
    if sorted(int(n) for n in re.findall(r"\d+", expression)) != numbers:
        return False
    return abs(expression_value(expression) - int(example["output"])) < 1e-5
