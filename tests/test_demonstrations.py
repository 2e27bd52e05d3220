"""The tiny bases' demonstrations: the rule solver by hand, the generator's mixture, the sft split."""

import pytest

from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.data import load_split
from gdsd_lightning.tasks import get_task
from gdsd_lightning.tasks.sudoku import is_valid_solution, rule_solver

# 2134 / 3412 / 1243 / 4321 with the top-left box empty: rows and boxes leave {1, 2} for cells 0
# and 1 and {3, 4} for cells 4 and 5; only column 0 (holding 1 and 4) says cell 0 is 2.
PUZZLE, SOLUTION = "0034001212434321", "2134341212434321"


def test_rule_solver_by_hand():
    assert is_valid_solution(SOLUTION)
    # rows and boxes: all four cells tie at two candidates, the first (cell 0) takes its smallest, 1;
    # cell 1 is then forced to 2, cell 4 takes 3 and cell 5 is forced to 4
    assert rule_solver(PUZZLE, ("row", "box")) == "1234341212434321"
    assert rule_solver(PUZZLE, ("row", "col", "box")) == SOLUTION      # cell 0 is forced by its column


def test_demonstrations_mix_the_solution_and_the_rule_solver():
    task = get_task("sudoku")
    rows = task.generate(600, seed=5, demonstrations=True)
    assert all(task.validate(row) == row for row in rows)                     # clues kept, digits 1-4
    assert all(r["Demonstration"] in (r["Solution"], rule_solver(r["Puzzle"], task.demonstration_rules)) for r in rows)
    differ = [r for r in rows if rule_solver(r["Puzzle"], task.demonstration_rules) != r["Solution"]]
    truthful = sum(r["Demonstration"] == r["Solution"] for r in differ) / len(differ)
    assert truthful == pytest.approx(task.demonstration_truth, abs=0.08)
    assert all(get_task("sudoku", prompt_style="plain").target(r) == r["Demonstration"] for r in rows)
    assert "Demonstration" not in task.generate(5, seed=5)[0]
    with pytest.raises(ValueError, match="keep the Puzzle's clues"):
        task.validate({"Puzzle": PUZZLE, "Solution": SOLUTION, "Demonstration": "2134341212434324"})


def test_the_base_is_fine_tuned_on_the_sft_split():
    cfg = load_experiment("tiny_sudoku_sft")
    examples, name = load_split(get_task("sudoku"), cfg.task, "train")
    assert name == "sft" and all("Demonstration" in ex for ex in examples[:100])
    rl = load_experiment("gdsd_tiny_sudoku")
    assert load_split(get_task("sudoku"), rl.task, "train")[1] == "train"      # RL prompts: the train split
