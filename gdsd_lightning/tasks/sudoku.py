"""4x4 sudoku: 16 digits row by row, 0 = empty. Reward = fraction of empty cells filled right.

The answer (GDSD and d1 rewards, gdsd/rewards.py:177-214): the digits (`str.isdigit`) of the last
closed <answer>...</answer>, none without one; in plain style the digits of the whole completion.
They are cut to 16 or padded with '0', and the reward is the fraction of the puzzle's empty cells
they fill with the solution's digit (0 with no digit at all). The releases' evaluation scripts and
d-OPSD's gate read the answer with five patterns instead (`patterned_answer`).

Generated rows may carry a `Demonstration` (the tiny base's SFT target, `sft` split): the
Solution, or the grid of a solver that knows only some of the rules (`rule_solver`).
"""

from __future__ import annotations

import csv
import itertools
import random
import re
from pathlib import Path

import numpy as np

from gdsd_lightning.tasks.base import HubSplits, Task, last_closed_answer

# The published training set: the 4x4 puzzles with a unique solution of the d1 release, which the
# GDSD and d-OPSD releases ship too (dataset/4x4_sudoku_unique_puzzles.csv).
UNIQUE_PUZZLES = "https://raw.githubusercontent.com/dllm-reasoning/d1/main/dataset/4x4_sudoku_unique_puzzles.csv"

# The user turns of the releases (GDSD: gdsd/data_utils.py:20-37 and :195; d1 and d-OPSD:
# data_utils.py SUDOKU_SYSTEM_PROMPT and get_sudoku_questions).
# The releases' sudoku answer format (the same in every release's prompts)
ANSWER_FORMAT = """Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""
GDSD_INSTRUCTIONS = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character
string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4.
- Each row must contain digits 1-4 exactly once.
- Each column must contain digits 1-4 exactly once.
- Each 2x2 box must contain digits 1-4 exactly once.

""" + ANSWER_FORMAT
D1_INSTRUCTIONS = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

""" + ANSWER_FORMAT
# The answer patterns of the releases' evaluation (GDSD eval/parse_and_get_acc.py:167-173, as in
# d1's), which d-OPSD's gate uses too (d-opsd/utils.py:340-382), tried in order.
ANSWER_PATTERNS = [re.compile(p, re.S) for p in (
    r"<answer>.*?```\s*([\d\s]+)```",
    r"<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)",
    r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)",
    r".*?(\d{16})\s*</answer>",
    r"\b(\d{16})\b",
)]


def is_valid_solution(grid: str) -> bool:
    """Every row, column and 2x2 box of a 16-digit grid holds 1..4 exactly once."""
    if len(grid) != 16 or set(grid) - set("1234"):
        return False
    cells = [[grid[4 * r + c] for c in range(4)] for r in range(4)]
    groups = [cells[r] for r in range(4)]
    groups += [[cells[r][c] for r in range(4)] for c in range(4)]
    groups += [[cells[r][c] for r in (br, br + 1) for c in (bc, bc + 1)] for br in (0, 2) for bc in (0, 2)]
    return all(sorted(g) == ["1", "2", "3", "4"] for g in groups)


def all_solutions() -> list[str]:
    """All 288 valid 4x4 grids, in lexicographic order."""
    rows = ["".join(p) for p in itertools.permutations("1234")]
    return [g for g in ("".join(r) for r in itertools.product(rows, repeat=4)) if is_valid_solution(g)]


def unit_of(cell: int, rule: str) -> int:
    """Index of the row, column or 2x2 box (`rule`) that cell 0..15 lies in."""
    row, col = divmod(cell, 4)
    return {"row": row, "col": col, "box": (row // 2) * 2 + col // 2}[rule]


def rule_solver(puzzle: str, rules: tuple[str, ...]) -> str:
    """The grid a solver that checks only `rules` (of row, col, box) writes for `puzzle`: while a
    cell is empty, the empty cell with the fewest candidates (digits that no filled cell sharing
    one of its `rules` units holds; ties: the first such cell) gets its smallest candidate, '1'
    when none is left. A solver without the column rule gets 34% of 8-blank puzzles right."""
    grid = list(puzzle)
    empty = [i for i, d in enumerate(grid) if d == "0"]
    while empty:
        def candidates(cell: int) -> list[str]:
            seen = {grid[j] for j in range(16) if any(unit_of(j, r) == unit_of(cell, r) for r in rules)}
            return [d for d in "1234" if d not in seen]

        options = {cell: candidates(cell) for cell in empty}
        cell = min(empty, key=lambda c: (len(options[c]) or 5, c))
        grid[cell] = options[cell][0] if options[cell] else "1"
        empty.remove(cell)
    return "".join(grid)


def count_completions(puzzle: str, grids: np.ndarray) -> int:
    """Number of valid grids (rows of `grids`, digits as ints) that agree with the clues."""
    clues = np.array([int(d) for d in puzzle])
    return int(((grids == clues) | (clues == 0)).all(axis=1).sum())


def patterned_answer(completion: str) -> str:
    """The first of ANSWER_PATTERNS that captures non-blank text, white space removed ('' for none)."""
    for pattern in ANSWER_PATTERNS:
        match = pattern.search(completion)
        if match and match.group(1).strip():
            return re.sub(r"\s", "", match.group(1).strip())
    return ""


def padded_grid(answer: str) -> str:
    """An answer cut or padded with '0' to 16 characters, as every release reads it ('' stays '')."""
    return answer[:16].ljust(16, "0") if answer else ""


def filled_cells(answer: str, example: dict) -> tuple[int, int]:
    """(the puzzle's empty cells that the `padded_grid` of `answer` fills with the solution's digit,
    the puzzle's empty cells)."""
    grid, puzzle, solution = padded_grid(answer), example["Puzzle"], example["Solution"]
    empty = [i for i, p in enumerate(puzzle) if p == "0"]
    return sum(grid[i] == solution[i] for i in empty) if grid else 0, len(empty)


class Sudoku(Task):
    name = "sudoku"
    hub = HubSplits("csv", None, train="train[:-256]", val="train[-256:]", data_files=UNIQUE_PUZZLES,
                    string_columns=("Puzzle", "Solution"))
    split_suffix = ".csv"
    num_empty = 8
    extra_metric_names = ("solve_rate",)

    def validate(self, row: dict) -> dict:
        puzzle, solution = str(row["Puzzle"]).strip(), str(row["Solution"]).strip()
        if not re.fullmatch(r"[0-4]{16}", puzzle):
            raise ValueError(f"Puzzle must be 16 digits 0-4, got {puzzle!r}")
        if not is_valid_solution(solution):
            raise ValueError(f"Solution {solution!r} is not a valid 4x4 sudoku grid")
        if any(p not in ("0", s) for p, s in zip(puzzle, solution)):
            raise ValueError("Puzzle clues disagree with Solution")
        if "0" not in puzzle:
            raise ValueError("Puzzle has no empty cell")
        checked = {"Puzzle": puzzle, "Solution": solution}
        if row.get("Demonstration") is not None:
            demonstration = str(row["Demonstration"]).strip()
            if not re.fullmatch(r"[1-4]{16}", demonstration) or any(p not in ("0", d) for p, d in zip(puzzle, demonstration)):
                raise ValueError(f"Demonstration {demonstration!r} must be 16 digits 1-4 that keep the Puzzle's clues")
            checked["Demonstration"] = demonstration
        return checked

    def prompt(self, example: dict) -> str:
        return f"{example['Puzzle']}\n"    # compact: every prompt token costs compute in every step

    def question(self, example: dict) -> str:
        if self.release == "gdsd":
            return f"{GDSD_INSTRUCTIONS}\n\nNow solve this Sudoku puzzle: {example['Puzzle']}\n"
        return f"{D1_INSTRUCTIONS}\n\nSolve the following Sudoku puzzle: {example['Puzzle']}\n"

    def target(self, example: dict) -> str:
        grid = example.get("Demonstration", example["Solution"])      # the SFT split's demonstration
        return grid if self.plain else f"<answer>\n{grid}\n</answer>"

    def answer(self, completion: str) -> str:
        """The grid as read from the completion (see the module docstring); '' when there is none."""
        if self.plain:
            text = completion
        elif self.release == "dopsd":
            return patterned_answer(completion)
        else:
            text = last_closed_answer(completion) or ""
        return "".join(c for c in text if c.isdigit())

    def cell_accuracy(self, completion: str, example: dict) -> float:
        correct, empty = filled_cells(self.answer(completion), example)
        return correct / empty

    def reward(self, completion: str, example: dict) -> float:
        return self.cell_accuracy(completion, example)

    def accuracy(self, completion: str, example: dict) -> float:
        return self.cell_accuracy(completion, example)

    def extra_metrics(self, completion: str, example: dict) -> dict[str, float]:
        return {"solve_rate": float(self.is_correct(completion, example))}

    # ---- generation ---------------------------------------------------------------------
    # Demonstrations of the tiny base (`sft` split): the true Solution for this fraction of the
    # rows, the rest from a solver that ignores the column rule. The base learns both behaviours
    # and prefers the rule solver's; RL with the true reward can select the other.
    demonstration_truth = 0.4
    demonstration_rules = ("row", "box")

    def generate(self, n: int, seed: int, exclude: set[str] = frozenset(), demonstrations: bool = False) -> list[dict]:
        """n distinct puzzles with `num_empty` blanks and a unique solution; with `demonstrations`
        each also gets a Demonstration: its Solution with probability `demonstration_truth`, else
        rule_solver(Puzzle, demonstration_rules)."""
        rng, grids = random.Random(seed), all_solutions()
        grid_digits = np.array([[int(d) for d in g] for g in grids])
        seen, rows = set(exclude), []
        while len(rows) < n:
            solution = rng.choice(grids)
            blanks = set(rng.sample(range(16), self.num_empty))
            puzzle = "".join("0" if i in blanks else d for i, d in enumerate(solution))
            if puzzle in seen or count_completions(puzzle, grid_digits) != 1:
                continue
            seen.add(puzzle)
            rows.append({"Puzzle": puzzle, "Solution": solution})
            if demonstrations:
                truthful = rng.random() < self.demonstration_truth
                rows[-1]["Demonstration"] = solution if truthful else rule_solver(puzzle, self.demonstration_rules)
        return rows

    def write(self, path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    def key(self, example: dict) -> str:
        return example["Puzzle"]
