"""4x4 sudoku: 16 digits row by row, 0 = empty. Reward = fraction of empty cells filled right."""

from __future__ import annotations

import csv
import itertools
import random
import re
from pathlib import Path

import numpy as np

from gdsd_lightning.tasks.base import Task


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


def count_completions(puzzle: str, grids: np.ndarray) -> int:
    """Number of valid grids (rows of `grids`, digits as ints) that agree with the clues."""
    clues = np.array([int(d) for d in puzzle])
    return int(((grids == clues) | (clues == 0)).all(axis=1).sum())


class Sudoku(Task):
    name = "sudoku"
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
        return {"Puzzle": puzzle, "Solution": solution}

    def prompt(self, example: dict) -> str:
        return f"{example['Puzzle']}\n"    # compact: every prompt token costs compute in every step

    def question(self, example: dict) -> str:
        return (
            "Please solve the following 4x4 Sudoku puzzle. The puzzle is given as 16 digits, row "
            "by row, with 0 for an empty cell. Fill every empty cell with a digit 1-4 so that each "
            "row, column and 2x2 box holds 1, 2, 3 and 4 exactly once, and give the full grid as "
            f"16 digits inside the answer tags.\nPuzzle: {example['Puzzle']}"
        )

    def target(self, example: dict) -> str:
        return example["Solution"]

    def answer_digits(self, completion: str) -> str:
        """The first 16 digits of the answer, padded with '0' (the field's convention)."""
        digits = re.sub(r"\D", "", self.extract_answer(completion))
        return digits[:16].ljust(16, "0")

    def cell_accuracy(self, completion: str, example: dict) -> float:
        answer, puzzle, solution = self.answer_digits(completion), example["Puzzle"], example["Solution"]
        empty = [i for i, p in enumerate(puzzle) if p == "0"]
        return sum(answer[i] == solution[i] for i in empty) / len(empty)

    def reward(self, completion: str, example: dict) -> float:
        return self.cell_accuracy(completion, example)

    def accuracy(self, completion: str, example: dict) -> float:
        return self.cell_accuracy(completion, example)

    def extra_metrics(self, completion: str, example: dict) -> dict[str, float]:
        return {"solve_rate": float(self.is_correct(completion, example))}

    # ---- generation ---------------------------------------------------------------------
    def generate(self, n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
        """n distinct puzzles with `num_empty` blanks and a unique solution."""
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
        return rows

    def write(self, path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["Puzzle", "Solution"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    def key(self, example: dict) -> str:
        return example["Puzzle"]
