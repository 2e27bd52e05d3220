"""Countdown (3 numbers): an expression that uses each given number exactly once with + - * /
and equals the target. Parsed with `ast` (never `eval`); reward 1.0 correct, 0.1 when the answer
is well formed (tags in chat style; a parseable expression in plain style) but wrong, else 0."""

from __future__ import annotations

import ast
import operator
import random
from collections import Counter
from fractions import Fraction

from gdsd_lightning.tasks.base import Task

OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
SYMBOLS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def evaluate_expression(text: str) -> tuple[float, list[int]] | None:
    """Value and the integer literals of an arithmetic expression, or None if it is not one.

    Only integer literals, parentheses and the four binary operators are accepted.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    numbers: list[int] = []

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            numbers.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ZeroDivisionError
            return OPERATORS[type(node.op)](left, right)
        raise ValueError(f"unsupported syntax {type(node).__name__}")

    try:
        value = walk(tree)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None
    return float(value), numbers


class Countdown(Task):
    name = "countdown"

    def validate(self, row: dict) -> dict:
        numbers = [int(x) for x in str(row["input"]).split(",")]
        if len(numbers) < 2:
            raise ValueError(f"input needs at least two comma-separated numbers, got {row['input']!r}")
        out = {"input": ",".join(map(str, numbers)), "output": str(int(str(row["output"]).strip()))}
        if "solution" in row:
            if not self.is_correct(str(row["solution"]), out):
                raise ValueError(f"solution {row['solution']!r} does not reach the target")
            out["solution"] = str(row["solution"])
        return out

    def prompt(self, example: dict) -> str:
        return f"{example['input']}->{example['output']}\n"

    def question(self, example: dict) -> str:
        return (
            f"Using the numbers {example['input'].replace(',', ', ')}, create an equation that "
            f"equals {example['output']}. You can use basic arithmetic operations (+, -, *, /) and "
            "each number must be used exactly once. Give only the expression inside the answer tags."
        )

    def target(self, example: dict) -> str:
        if "solution" not in example:
            raise ValueError("countdown example has no 'solution' field to train on")
        return example["solution"]

    def parse(self, completion: str) -> tuple[float, list[int]] | None:
        answer = self.extract_answer(completion).split("=")[0]
        return evaluate_expression(answer) if answer.strip() else None

    def is_correct(self, completion: str, example: dict) -> bool:
        parsed = self.parse(completion)
        if parsed is None:
            return False
        value, used = parsed
        given = [int(x) for x in example["input"].split(",")]
        return Counter(used) == Counter(given) and abs(value - float(example["output"])) < 1e-5

    def reward(self, completion: str, example: dict) -> float:
        if self.is_correct(completion, example):
            return 1.0
        well_formed = "<answer>" in completion or self.parse(completion) is not None
        return 0.1 if well_formed else 0.0

    def accuracy(self, completion: str, example: dict) -> float:
        return float(self.is_correct(completion, example))

    # ---- generation ---------------------------------------------------------------------
    max_number = 99
    max_target = 100

    def generate(self, n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
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
