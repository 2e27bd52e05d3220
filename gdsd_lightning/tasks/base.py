"""The task interface: data loading with row validation, prompts, answer parsing, rewards.

Examples are plain dicts with the data set's own field names (sudoku: Puzzle/Solution,
countdown: input/output or the hub's nums/target, gsm8k: question/answer, math:
problem/solution/answer, humaneval: prompt/test/entry_point, mbpp:
text/code/test_list/test_setup_code), so
`task.is_correct(completion, example)` works on rows read straight from the published files.
Splits come from a local file (JSONL, CSV, Parquet) or, for the hub data sets, `datasets`.

A task is built for one prompt style and one release (`get_task(name, prompt_style, release)`):
- `prompt_style="chat"` (the instruct models): the release's user turn, and its reward rules
  exactly, tags and all;
- `prompt_style="plain"` (the tiny models): a compact prompt, and a completion without tags whose
  whole text is the answer; what is then done with the answer is the release's rule.
`release` is whose prompts and rules the chat style follows: "gdsd" (the reference: the GDSD
paper ran every method with them), "d1" (diffu-GRPO's, and wd1's), "dopsd" (d-OPSD's, whose
prompts ask for a \\boxed{} answer and whose gate has its own answer parsing).
"""

from __future__ import annotations

import csv
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from gdsd_lightning.errors import UserError
from gdsd_lightning.hub import offline_unless_reachable, unreachable

CLOSED_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)

PROMPT_STYLES = ("plain", "chat")
RELEASES = ("gdsd", "d1", "dopsd")


@dataclass
class TaskConfig:
    """The `task` section: which task, its data and its prompts."""

    name: str = "sudoku"
    data_dir: Optional[str] = "data"       # generated splits: <data_dir>/<task>/{train,val,test}.*; null: the
                                           # task's published data set (the hub, or a release's file)
    train_split: str = "train"             # the generated split training reads: train, or sft (demonstrations)
    train_path: Optional[str] = None       # overrides of the split files
    val_path: Optional[str] = None
    test_path: Optional[str] = None
    num_val: int = 128                     # val examples scored at each periodic evaluation
    prompt_style: str = "plain"            # plain (tiny models: no tags) | chat (instruct models: the release's)
    release: str = "gdsd"                  # whose chat prompts and reward rules: gdsd | d1 | dopsd
    max_prompt_length: Optional[int] = None  # keep the last n prompt tokens (the releases: 400 GDSD, 200 d1)

    def problems(self, cfg=None) -> list[str]:
        """One sentence for each task.* setting no task accepts."""
        problems = prompt_problems(self.prompt_style, self.release)
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            problems.append(f"task.max_prompt_length must be a positive number of tokens or null, "
                            f"got {self.max_prompt_length}")
        return problems


def prompt_problems(prompt_style: str, release: str) -> list[str]:
    """One sentence for an unknown task.prompt_style and one for an unknown task.release."""
    problems = []
    if prompt_style not in PROMPT_STYLES:
        problems.append(f"task.prompt_style must be one of {', '.join(PROMPT_STYLES)}, got {prompt_style!r}")
    if release not in RELEASES:
        problems.append(f"task.release must be one of {', '.join(RELEASES)}, got {release!r}")
    return problems

# The releases' answer-format paragraph, which they put at the head of the user turn (the same
# text in GDSD's gdsd/data_utils.py:10-18 and d1's diffu-grpo/data_utils.py:26-34).
ANSWER_FORMAT = "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
# d-OPSD's, for GSM8K and MATH (d-opsd/data_utils.py SYSTEM_PROMPT): it asks for a \\boxed{} answer.
DOPSD_ANSWER_FORMAT = (
    "\nYou are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final "
    "answer in a \\boxed{}. \nRespond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n"
    "<answer>\n\\boxed{...}\n</answer>\n"
)


def last_closed_answer(completion: str) -> str | None:
    """The stripped text of the last closed `<answer>...</answer>`, None without one (a lone or
    unclosed `<answer>` is not an answer)."""
    closed = CLOSED_ANSWER_TAG.findall(completion)
    return closed[-1].strip() if closed else None


@dataclass(frozen=True)
class HubSplits:
    """Where a task's splits live on the Hugging Face hub: a data set id and config, and per split
    a `datasets` split expression ('train[:-256]') or a whole (id, config, split) triple. A data
    set published as a file of a release is read by a `datasets` builder (`dataset="csv"`) from
    `data_files`."""

    dataset: str
    config: str | None
    train: str | tuple | None = None
    val: str | tuple | None = None
    test: str | tuple | None = None
    data_files: str | None = None   # with a builder as `dataset` ("csv"): the release's file (a URL)
    string_columns: tuple[str, ...] = ()   # columns read as text, whatever they look like (leading zeros)

    def source(self, split: str) -> tuple[str, str | None, str] | None:
        where = getattr(self, split)
        if where is None or isinstance(where, tuple):
            return where
        return self.dataset, self.config, where


class Task(ABC):
    """A task: what a prompt looks like, what a good completion is, and how it is scored."""

    name: str
    hub: HubSplits | None = None   # set by tasks whose data sets live on the hub
    system_prompt: str | None = None   # a system turn before the user turn (the reasoning tasks have none)

    def __init__(self, prompt_style: str = "chat", release: str = "gdsd"):
        problems = prompt_problems(prompt_style, release)
        if problems:
            raise UserError("; ".join(problems))
        self.prompt_style, self.release = prompt_style, release

    @property
    def plain(self) -> bool:
        """Plain prompts: the completion carries no tags and its whole text is the answer."""
        return self.prompt_style == "plain"

    # ---- data ---------------------------------------------------------------------------
    def load(self, path: str | Path) -> list[dict]:
        """Read a split file (JSONL, CSV or Parquet); a malformed row raises `UserError` naming
        file and line (row number for Parquet)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"data file {path} does not exist")
        readers = {".csv": read_csv, ".parquet": read_parquet}
        return self.validated(readers.get(path.suffix, read_jsonl)(path), str(path), "line")

    def load_hub(self, split: str) -> list[dict]:
        """The `split` of this task's hub data set through `datasets.load_dataset` (local cache when
        the hub is unreachable); fails in seconds with a sentence when neither has it."""
        source = self.hub.source(split) if self.hub else None
        if source is None:
            raise UserError(f"task {self.name} has no {split} split of its own; set task.{split}_path "
                            f"to a JSONL, CSV or Parquet file")
        dataset_id, config, expression = source
        import datasets

        online = offline_unless_reachable()
        options = {}
        if dataset_id == self.hub.dataset and self.hub.data_files:   # a release's file through a `datasets` builder
            options["data_files"] = self.hub.data_files
            if self.hub.string_columns:
                options["features"] = datasets.Features({c: datasets.Value("string") for c in self.hub.string_columns})
        name = options.get("data_files", dataset_id)
        try:
            rows = datasets.load_dataset(dataset_id, config, split=expression, **options)
        except (ConnectionError, FileNotFoundError):
            if online:
                raise
            raise unreachable("data set", name, f"set task.{split}_path to a local JSONL, CSV or Parquet file") from None
        return self.validated(enumerate(rows, start=1), f"{name} [{expression}]", "row")

    def validated(self, rows: Iterable[tuple[int, dict]], source: str, unit: str) -> list[dict]:
        """Every row the release trains on (`selected`) through `validate`; an error names the source
        and the row's `unit` number."""
        examples = []
        for number, row in rows:
            try:
                if not self.selected(row):
                    continue
                examples.append(self.validate(row))
            except (KeyError, ValueError, TypeError) as err:
                raise UserError(f"{source}, {unit} {number}: malformed {self.name} row ({type(err).__name__}: {err})") from None
        if not examples:
            raise UserError(f"{source} holds no rows")
        return examples

    def selected(self, row: dict) -> bool:
        """Whether a raw row is one the release uses (countdown: three numbers); others are left out."""
        return True

    @abstractmethod
    def validate(self, row: dict) -> dict:
        """Check one raw row and return it (normalised); raise ValueError/KeyError if malformed."""

    # ---- prompts ------------------------------------------------------------------------
    @abstractmethod
    def prompt(self, example: dict) -> str:
        """Plain prompt for the tiny models (no chat template)."""

    @abstractmethod
    def question(self, example: dict) -> str:
        """The user turn of a chat prompt, as the release writes it (task instructions included)."""

    def chat_messages(self, example: dict) -> list[dict]:
        """The chat prompt: the user turn, after the system turn where the task has one."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": self.question(example)}]

    @abstractmethod
    def target(self, example: dict) -> str:
        """The reference completion in this task's prompt style, used for SFT."""

    # ---- scoring ------------------------------------------------------------------------
    @abstractmethod
    def reward(self, completion: str, example: dict) -> float:
        """Training reward of one completion."""

    @abstractmethod
    def accuracy(self, completion: str, example: dict) -> float:
        """The metric the field reports as accuracy for this task, in [0, 1]."""

    def is_correct(self, completion: str, example: dict) -> bool:
        return self.accuracy(completion, example) >= 1.0

    def score(self, completion: str, example: dict) -> dict:
        """One completion's record: reward, accuracy, verified correctness and the extra metrics
        (code tasks override it to run their tests once for all of them)."""
        return {"reward": self.reward(completion, example), "accuracy": self.accuracy(completion, example),
                "correct": self.is_correct(completion, example), **self.extra_metrics(completion, example)}

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

    def generate(self, n: int, seed: int, exclude: set[str] = frozenset(), demonstrations: bool = False) -> list[dict]:
        """n distinct examples from a seeded generator, none of whose `key` is in `exclude`; with
        `demonstrations`, each with the target the tiny base is fine-tuned on (`target`)."""
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


def read_parquet(path: Path):
    """Yield (row number, dict) per row of a Parquet file."""
    import pyarrow.parquet as pq

    for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield number, row


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
