"""Countdown (3 numbers): an arithmetic expression that uses each given number exactly once and
equals the target.

Reward (GDSD and d1 releases, gdsd/rewards.py:122-174), on the last closed <answer>...</answer>:
    0    no closed answer tag
    0.1  the numbers in it (every run of digits) are not exactly the given ones, or it is not an
         arithmetic expression, or its value misses the target ("30-(100-93)=23" is such a miss)
    1.0  |value - target| < 1e-5
An arithmetic expression is what the release lets Python evaluate: digits, + - * / ( ) . and
white space, so unary minus, '**', '//' and decimals count, with Python's arithmetic. It is
parsed with `ast` and computed node by node, never `eval`ed.
Plain style (the tiny models, no tags): the whole completion is the answer, and the 0.1 also
needs it to be an arithmetic expression (else 0), so the format credit still means something.
The tiny base is trained on the solution that keeps the numbers in the prompt's order when one
exists (`in_order_solution`), else on the generator's: an easy habit that solves most problems.
The releases' evaluation scripts and d-OPSD's gate (release="dopsd") read a \\boxed{} answer
instead: see `boxed_expression`.
"""

from __future__ import annotations

import ast
import functools
import operator
import random
import re
from fractions import Fraction

from gdsd_lightning.tasks.base import ANSWER_FORMAT, CLOSED_ANSWER_TAG, HubSplits, Task, last_closed_answer
from gdsd_lightning.tasks.math_answers import NotNormalisable, last_boxed, unbox

ARITHMETIC_TEXT = re.compile(r"^[\d+\-*/().\s]+$")
EQUATION = re.compile(r"([0-9+\-*/() ]+)=[0-9. ]+")   # `expr = number`, as the releases' parsers cut it
SYMBOLS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
# An integer power whose value would need more bits than this is not computed: the release's eval
# would spend minutes and all memory on it, and no such number is within 1e-5 of a target.
MAX_POWER_BITS = 1 << 24

# d-OPSD's user-turn instructions (d-opsd/data_utils.py CTD_SYSTEM_PROMPT): a \boxed{} answer.
DOPSD_INSTRUCTIONS = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the provided "
    "target number. You may use the operations +, -, *, and / as needed, but each number must be used exactly "
    "once. Think step-by-step. After reasoning, provide only your final expression inside \\boxed{} tags without "
    "including an equals sign or the target number. For example: \\boxed{a + b * c}Respond in the following "
    "format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>"
)


def power(base, exponent):
    """base ** exponent, refusing (OverflowError) an integer power of more than MAX_POWER_BITS bits."""
    if type(base) is int and type(exponent) is int and exponent > 0 and abs(base) > 1 \
            and (abs(base).bit_length() - 1) * exponent > MAX_POWER_BITS:
        raise OverflowError("integer power too large to compute")
    return base ** exponent


BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Pow: power}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def arithmetic_value(text: str) -> int | float | complex | None:
    """The value Python gives the arithmetic expression `text` (digits, + - * / ( ) . and white
    space only), or None when it is not one or its evaluation fails (division by zero, overflow).

    The tree is walked with an explicit stack, so a deep chain of unary minus evaluates as Python
    does (up to the parser's own nesting limit)."""
    if not ARITHMETIC_TEXT.match(text):
        return None
    try:
        tree = ast.parse(text.lstrip(" \t"), mode="eval")     # eval() drops leading spaces and tabs too
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    values, pending = [], [(tree.body, False)]
    try:
        while pending:
            node, operands_done = pending.pop()
            if isinstance(node, ast.Constant) and type(node.value) in (int, float):
                values.append(node.value)
            elif isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
                if operands_done:
                    values.append(UNARY[type(node.op)](values.pop()))
                else:
                    pending += [(node, True), (node.operand, False)]
            elif isinstance(node, ast.BinOp) and type(node.op) in BINARY:
                if operands_done:
                    right, left = values.pop(), values.pop()
                    values.append(BINARY[type(node.op)](left, right))
                else:
                    pending += [(node, True), (node.right, False), (node.left, False)]
            else:                   # (), ..., calls like 2(3): not a number, or a TypeError in eval
                return None
    except (ArithmeticError, TypeError, ValueError, MemoryError):
        return None
    return values[0]


def uses_exactly(text: str, numbers: list[int]) -> bool:
    """Every run of digits in `text`, as integers, is the multiset `numbers`."""
    try:
        return sorted(int(n) for n in re.findall(r"\d+", text)) == sorted(numbers)
    except ValueError:                                          # a run of digits too long for int()
        return False


def reaches(value, target: int) -> bool:
    try:
        return abs(value - target) < 1e-5
    except (OverflowError, TypeError):
        return False


def correct_expression(expression: str, numbers: list[int], target: int) -> bool:
    """`expression` uses exactly `numbers` and its value is within 1e-5 of `target`."""
    if not uses_exactly(expression, numbers):
        return False
    value = arithmetic_value(expression)
    return value is not None and reaches(value, target)


def boxed_expression(completion: str, whole_if_unboxed: bool = False) -> str:
    """The expression the releases' \\boxed{} parsers read: the content of the last \\boxed{...} (or
    of "\\boxed " up to a '$'), else the first closed answer tag, else the whole completion; then
    \\div \\times \\cdot made / * * and an `expr = number` cut to `expr`.

    They differ on a completion without a \\boxed{...}, where last_boxed_only_string returns the
    whole text (or its last \\fbox{...}):
    - whole_if_unboxed=False, GDSD's evaluation (eval/parse_and_get_acc.py:82-92): its remove_boxed
      (eval/parse_utils.py:46-60) raises, so the answer tag is read;
    - whole_if_unboxed=True, d1's evaluation (eval/parse_and_get_acc.py:219-229) and d-OPSD's gate
      (d-opsd/utils.py:405-420): their remove_boxed (d1 eval/parser_helper.py:46-60) returns the
      text unchanged, so `<answer>2*4-3</answer>` is read whole."""
    boxed = last_boxed(completion)
    if not whole_if_unboxed and boxed is not None and not boxed.startswith(("\\boxed{", "\\boxed ")):
        boxed = None
    try:
        expression = unbox(boxed, strict=True)
    except NotNormalisable:
        tagged = CLOSED_ANSWER_TAG.search(completion)
        expression = tagged.group(1).strip() if tagged else completion
    expression = expression.replace("\\div", "/").replace("\\times", "*").replace("\\cdot", "*")
    equation = EQUATION.search(expression)
    return equation.group(1).strip() if equation else expression


def boxed_correct(completion: str, numbers: list[int], target: int, whole_if_unboxed: bool = False) -> bool:
    """The releases' \\boxed{} check: GDSD's evaluation (eval/parse_and_get_acc.py:82-109), or with
    `whole_if_unboxed` d1's evaluation (:219-246) and d-OPSD's gate (d-opsd/utils.py:405-431). The
    `boxed_expression`, stripped (as all three evaluate it), uses exactly the numbers and reaches
    the target."""
    return correct_expression(boxed_expression(completion, whole_if_unboxed).strip(), numbers, target)


@functools.lru_cache(maxsize=None)
def in_order_solution(numbers: tuple[int, ...], target: int) -> str | None:
    """The first of `(x o y) o z`, `x o (y o z)` with x, y, z the numbers in their given order and
    o in + - * / (ops in that order, left grouping first) that reaches the target, or None. Cached:
    the SFT target of a problem is asked for at every step that draws it (about 10 ms per 64)."""
    x, y, z = numbers
    for first in "+-*/":
        for second in "+-*/":
            for text in (f"({x}{first}{y}){second}{z}", f"{x}{first}({y}{second}{z})"):
                if correct_expression(text, numbers, target):
                    return text
    return None


class Countdown(Task):
    name = "countdown"
    # The releases' training set, three-number problems only (gdsd/data_utils.py:159-161); its last
    # 1000 rows (about half of them three-number ones) are held out here as val.
    hub = HubSplits("Jiayi-Pan/Countdown-Tasks-3to4", None, train="train[:-1000]", val="train[-1000:]")
    num_numbers = 3

    def selected(self, row: dict) -> bool:
        """Rows of Countdown-Tasks-3to4 (`nums`, `target`) with three numbers, as the releases filter."""
        return "nums" not in row or len(row["nums"]) == self.num_numbers

    @staticmethod
    def problem(example: dict) -> tuple[list[int], int]:
        """The numbers and the target of a row of Countdown-Tasks-3to4 (`nums` list, `target`) or of
        the published test file and the generated splits (`input` "a,b,c", `output`)."""
        if "nums" in example:
            return [int(x) for x in example["nums"]], int(example["target"])
        return [int(x) for x in str(example["input"]).split(",")], int(str(example["output"]).strip())

    def validate(self, row: dict) -> dict:
        """A row in either published layout, normalised to `input`/`output` (and `solution`)."""
        numbers, target = self.problem(row)
        if len(numbers) < 2:
            raise ValueError(f"needs at least two numbers, got {numbers}")
        out = {"input": ",".join(map(str, numbers)), "output": str(target)}
        if "solution" in row:
            if not self.solves(str(row["solution"]), out):
                raise ValueError(f"solution {row['solution']!r} does not reach the target")
            out["solution"] = str(row["solution"])
        return out

    def prompt(self, example: dict) -> str:
        return f"{example['input']}->{example['output']}\n"

    def question(self, example: dict) -> str:
        """The release's user turn; the numbers as the releases print them, a Python list."""
        numbers, target = self.problem(example)
        if self.release == "dopsd":
            return f"{DOPSD_INSTRUCTIONS}\n\nNumbers: {numbers}\nTarget: {target}"
        if self.release == "d1":
            return (f"{ANSWER_FORMAT}\nUsing only the numbers {numbers}, create an arithmetic expression that "
                    f"evaluates to exactly {target}. You must use all numbers from the list, and each number must "
                    "be used exactly once. You may use the operations +, -, *, and / as needed. After reasoning, "
                    "provide only your final expression inside <answer></answer> tags without including an equals "
                    "sign or the target number. For example, if the numbers are [2, 3, 4] and the target is 5, a "
                    "valid answer is: <answer>\n2*4-3\n</answer>")
        return (f"{ANSWER_FORMAT}\nUsing only the numbers {numbers}, create an arithmetic expression that evaluates "
                f"to exactly {target}. Use every number exactly once. Use +, -, *, and / as needed. Put only the "
                "final expression inside <answer></answer> tags.")

    def target(self, example: dict) -> str:
        if "solution" not in example:
            raise ValueError("countdown example has no 'solution' field to train on")
        if self.plain:
            numbers, target = self.problem(example)
            return in_order_solution(tuple(numbers), target) or example["solution"]
        boxed = f"\\boxed{{{example['solution']}}}" if self.release == "dopsd" else example["solution"]
        return f"<answer>\n{boxed}\n</answer>"

    def solves(self, expression: str, example: dict) -> bool:
        """`expression` uses exactly the given numbers and reaches the target."""
        return correct_expression(expression, *self.problem(example))

    def reward(self, completion: str, example: dict) -> float:
        if self.release == "dopsd" and not self.plain:
            return float(boxed_correct(completion, *self.problem(example), whole_if_unboxed=True))
        answer = completion.strip() if self.plain else last_closed_answer(completion)
        if answer is None:
            return 0.0
        if self.solves(answer, example):
            return 1.0
        return 0.0 if self.plain and arithmetic_value(answer) is None else 0.1

    def accuracy(self, completion: str, example: dict) -> float:
        return float(self.reward(completion, example) == 1.0)

    # ---- generation ---------------------------------------------------------------------
    max_number = 99
    max_target = 100

    def generate(self, n: int, seed: int, exclude: set[str] = frozenset(), demonstrations: bool = False) -> list[dict]:
        """n distinct problems `a,b,c -> target` with a solution of the form `x o (y o z)` or
        `(x o y) o z` whose intermediate and final values are positive integers."""
        rng, seen, rows = random.Random(seed), set(exclude), []
        while len(rows) < n:
            numbers = [rng.randint(1, self.max_number) for _ in range(3)]
            x, y, z = rng.sample(numbers, 3)
            o1, o2 = rng.choice("+-*/"), rng.choice("+-*/")
            if rng.random() < 0.5:
                inner, text = SYMBOLS[o1](Fraction(x), y), f"({x}{o1}{y}){o2}{z}"
                value = SYMBOLS[o2](inner, z) if inner.denominator == 1 else None
            else:
                inner, text = SYMBOLS[o2](Fraction(y), z), f"{x}{o1}({y}{o2}{z})"
                value = SYMBOLS[o1](Fraction(x), inner) if inner.denominator == 1 and inner != 0 else None
            if value is None or inner <= 0 or value.denominator != 1 or not 1 <= value <= self.max_target:
                continue
            row = {"input": ",".join(map(str, numbers)), "output": str(int(value)), "solution": text}
            if self.key(row) in seen:
                continue
            seen.add(self.key(row))
            rows.append(row)
        return rows

    def key(self, example: dict) -> str:
        return f"{example['input']}->{example['output']}"
