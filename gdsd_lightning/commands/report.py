"""`python -m gdsd_lightning report`: the papers' table over eval summaries, beside the published
figures (data/published/gdsd_paper.csv).

    summaries (summary.json files written by `eval`, or directories searched for them)
      -> one row per (model family, method, protocol, checkpoint rule): per task the accuracy at
         every generation length and the best, and the published figure where there is one
      -> <out>/report.md    one table per model family, in percent, with the protocol notes
         <out>/report.csv   the same in long form (one line per row, task and length)
         <out>/report.png   per family and task: best accuracy of each method, ours beside the paper's

Several summaries of the same row and task: the newest one counts. The papers report the best
checkpoint; rows evaluated with eval.checkpoint=best_test are marked * (chosen on the test data).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from gdsd_lightning.config import PROJECT_ROOT
from gdsd_lightning.errors import UserError
from gdsd_lightning.protocol import MINERVA_SUBJECTS

PUBLISHED = PROJECT_ROOT / "data" / "published" / "gdsd_paper.csv"
TASK_COLUMNS = {"gsm8k_cot": "gsm8k", "minerva_math": "math"}     # lm-eval task -> the papers' column
TASK_ORDER = ["sudoku", "countdown", "gsm8k", "math", "humaneval", "mbpp"]
MODEL_NAMES = {"llada": "LLaDA-8B-Instruct", "dream": "Dream-7B-Instruct"}


@dataclass
class Row:
    family: str
    method: str
    protocol: str
    checkpoint_rule: str
    cells: dict[str, dict[str, float]] = field(default_factory=dict)   # task -> length or "best" -> accuracy
    sources: dict[str, str] = field(default_factory=dict)             # task -> summary.json

    @property
    def label(self) -> str:
        return f"{self.method}{' *' if self.checkpoint_rule == 'best_test' else ''}"

    @property
    def long_label(self) -> str:
        return f"{self.label}\n{self.protocol}, {self.checkpoint_rule}"


def find_summaries(paths: list[str]) -> list[Path]:
    """Eval summary.json files among `paths` (files, or directories searched recursively)."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path} does not exist")
        candidates = [path] if path.is_file() else sorted(path.rglob("summary.json"))
        for candidate in candidates:
            try:
                summary = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                raise UserError(f"{candidate} is not a readable JSON file") from None
            if isinstance(summary, dict) and "protocol" in summary and "results" in summary:
                found.append(candidate)
            elif path.is_file():
                raise UserError(f"{candidate} is not an eval summary (no protocol and results; a training summary?)")
    if not found:
        raise UserError(f"no eval summary.json under {', '.join(paths)}; run `make eval EXP=...` first")
    return found


def collect(paths: list[Path]) -> list[Row]:
    """Rows keyed by (family, method, protocol, checkpoint rule); the newest summary per task wins."""
    rows: dict[tuple, Row] = {}
    for path in sorted(paths, key=lambda p: p.stat().st_mtime):
        summary = json.loads(path.read_text())
        key = (summary["model"]["family"], summary["model"]["method"], summary["protocol"]["name"],
               summary["checkpoint_rule"])
        row = rows.setdefault(key, Row(*key))
        for name, per_length in summary["results"].items():
            if name in MINERVA_SUBJECTS:
                continue
            task = TASK_COLUMNS.get(name, name)
            row.cells[task] = {k: v["accuracy"] for k, v in per_length.items() if k != "best"}
            row.cells[task]["best"] = per_length["best"]["accuracy"]
            row.sources[task] = str(path)
    return list(rows.values())


def published_figures(path: Path = PUBLISHED) -> dict[tuple[str, str, str], float]:
    """(family, method, task) -> published accuracy as a fraction."""
    with open(path, newline="", encoding="utf-8") as f:
        return {(r["model"], r["method"], r["task"]): float(r["accuracy_percent"]) / 100 for r in csv.DictReader(f)}


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def ordered_tasks(rows: list[Row]) -> list[str]:
    present = {t for r in rows for t in r.cells}
    return [t for t in TASK_ORDER if t in present] + sorted(present - set(TASK_ORDER))


def lengths_of(rows: list[Row], task: str) -> list[str]:
    return sorted({k for r in rows for k in r.cells.get(task, {}) if k != "best"}, key=int)


def markdown(rows: list[Row], published: dict) -> str:
    """One table per model family: per task every length, the best, and the published figure."""
    parts = []
    for family in sorted({r.family for r in rows}):
        family_rows = [r for r in rows if r.family == family]
        tasks = ordered_tasks(family_rows)
        with_paper = {t for t in tasks if any(key[0] == family and key[2] == t for key in published)}
        header = ["method", "protocol", "checkpoint"]
        for task in tasks:
            header += [f"{task} L{n}" for n in lengths_of(family_rows, task)] + [f"{task} best"]
            header += [f"{task} paper"] if task in with_paper else []
        lines = [f"## {MODEL_NAMES.get(family, family)}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header)]
        for row in family_rows:
            cells = [row.label, row.protocol, row.checkpoint_rule]
            for task in tasks:
                ours = row.cells.get(task, {})
                cells += [percent(ours.get(n)) for n in lengths_of(family_rows, task)] + [percent(ours.get("best"))]
                cells += [percent(published.get((family, row.method, task)))] if task in with_paper else []
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def long_form(rows: list[Row], published: dict) -> list[dict]:
    out = []
    for row in rows:
        for task, cells in row.cells.items():
            for length, accuracy in cells.items():
                out.append({"model": row.family, "method": row.method, "protocol": row.protocol,
                            "checkpoint_rule": row.checkpoint_rule, "optimistic": row.checkpoint_rule == "best_test",
                            "task": task, "length": length, "accuracy": accuracy,
                            "published": published.get((row.family, row.method, task), "") if length == "best" else "",
                            "summary": row.sources[task]})
    return out


def plot(rows: list[Row], published: dict, path: Path) -> None:
    """Per family and task: the best accuracy of each method, ours beside the published one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(family, task) for family in sorted({r.family for r in rows})
              for task in ordered_tasks([r for r in rows if r.family == family])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (family, task) in zip(axes[0], panels):
        entries = [r for r in rows if r.family == family and task in r.cells]
        x = range(len(entries))
        ax.bar([i - 0.2 for i in x], [100 * r.cells[task]["best"] for r in entries], 0.4, color="tab:blue",
               label="this harness")
        paper = [(i, published[key]) for i, r in enumerate(entries) if (key := (family, r.method, task)) in published]
        if paper:
            ax.bar([i + 0.2 for i, _ in paper], [100 * p for _, p in paper], 0.4, color="tab:orange", hatch="//",
                   label="published (GDSD paper)")
        ax.set_xticks(list(x), [r.long_label for r in entries], fontsize=8)
        ax.set(title=f"{MODEL_NAMES.get(family, family)}: {task} (best length)", ylabel="accuracy %", ylim=(0, 100),
               xlim=(-0.6, len(entries) - 0.4))
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


NOTES = """Accuracy in percent at each generation length (L) and the best length; `paper`: the GDSD
paper's figure ({source}). Each row follows the protocol it names (docs/evaluation.md): `papers` is
the releases' protocol, `experiment` the experiment's own (not comparable with the papers). The
papers report the best checkpoint; `*` marks rows whose checkpoint was chosen on the test data
(eval.checkpoint=best_test), as theirs; `best_val` rows chose it on the val split.
"""


def report(paths: list[str], out: str) -> str:
    """Write report.md, report.csv and report.png into `out`; returns a short message."""
    rows = collect(find_summaries(paths))
    published = published_figures()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, published)
    (out_dir / "report.md").write_text(f"# Evaluation report\n\n{NOTES.format(source=PUBLISHED.name)}\n{table}\n\n"
                                       "![best accuracy per method](report.png)\n")
    records = long_form(rows, published)
    with open(out_dir / "report.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    plot(rows, published, out_dir / "report.png")
    return f"{table}\n\nwrote {out_dir}/report.md, report.csv, report.png"
