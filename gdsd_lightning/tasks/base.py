"""The task interface: data loading with row validation, prompts, answer parsing, rewards.

Examples are plain dicts with the data set's own field names (sudoku: Puzzle/Solution,
countdown: input/output), so `task.is_correct(completion, example)` works on rows read straight
from the published files.
"""

from __future__ import annotations

import csv
import json
import re
from abc import ABC, abstractmethod
from pathlib import Path

from gdsd_lightning.errors import UserError

ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)

REASONING_SYSTEM_PROMPT = (
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)


class Task(ABC):
    """A task: what a prompt looks like, what a good completion is, and how it is scored."""

    name: str

    # ---- data ---------------------------------------------------------------------------
    def load(self, path: str | Path) -> list[dict]:
        """Read a split (JSONL or CSV); a malformed row raises `UserError` naming file and line."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"data file {path} does not exist")
        rows = read_csv(path) if path.suffix == ".csv" else read_jsonl(path)
        examples = []
        for line, row in rows:
            try:
                examples.append(self.validate(row))
            except (KeyError, ValueError, TypeError) as err:
                raise UserError(f"{path}, line {line}: malformed {self.name} row ({err})") from None
        if not examples:
            raise UserError(f"data file {path} holds no rows")
        return examples

    @abstractmethod
    def validate(self, row: dict) -> dict:
        """Check one raw row and return it (normalised); raise ValueError/KeyError if malformed."""

    # ---- prompts ------------------------------------------------------------------------
    @abstractmethod
    def prompt(self, example: dict) -> str:
        """Plain prompt for the tiny models (no chat template)."""

    @abstractmethod
    def question(self, example: dict) -> str:
        """The user turn of a chat prompt."""

    def chat_messages(self, example: dict) -> list[dict]:
        """Chat prompt in the field's format: a system prompt asking for reasoning/answer tags."""
        return [
            {"role": "system", "content": REASONING_SYSTEM_PROMPT},
            {"role": "user", "content": self.question(example)},
        ]

    @abstractmethod
    def target(self, example: dict) -> str:
        """The reference completion (plain format), used for SFT."""

    # ---- scoring ------------------------------------------------------------------------
    @staticmethod
    def extract_answer(completion: str) -> str:
        """Text inside the last `<answer>` tag if present, else the whole completion."""
        tagged = ANSWER_TAG.findall(completion)
        return (tagged[-1] if tagged else completion).strip()

    @abstractmethod
    def reward(self, completion: str, example: dict) -> float:
        """Training reward of one completion."""

    @abstractmethod
    def accuracy(self, completion: str, example: dict) -> float:
        """The metric the field reports as accuracy for this task, in [0, 1]."""

    def is_correct(self, completion: str, example: dict) -> bool:
        return self.accuracy(completion, example) >= 1.0

    extra_metric_names: tuple[str, ...] = ()

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every per-completion metric that evaluation averages."""
        return ("accuracy", "reward", *self.extra_metric_names)

    def extra_metrics(self, completion: str, example: dict) -> dict[str, float]:
        """Task-specific metrics beside accuracy (`extra_metric_names`, e.g. sudoku's solve rate)."""
        return {}

    # ---- generated splits (tasks with a seeded generator) -------------------------------
    split_suffix = ".jsonl"

    def generate(self, n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
        """n distinct examples from a seeded generator, none of whose `key` is in `exclude`."""
        raise NotImplementedError(f"task {self.name} has no generator; it reads a data set")

    def key(self, example: dict) -> str:
        """Identity of an example, used to keep generated splits disjoint."""
        raise NotImplementedError

    def write(self, path: Path, rows: list[dict]) -> None:
        write_jsonl(path, rows)


def read_jsonl(path: Path):
    """Yield (line number, dict) per non-empty line; a line that is not a JSON object is an error."""
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}, line {number}: expected a JSON object")
            yield number, row


def read_csv(path: Path):
    """Yield (line number, dict) per data row of a CSV file with a header line."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if None in row or None in row.values():
                raise UserError(f"{path}, line {reader.line_num}: wrong number of columns")
            yield reader.line_num, row


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
