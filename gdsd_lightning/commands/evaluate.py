"""`eval`: a trained model under a named protocol (protocol.py, docs/evaluation.md), every
generation length reported and the best of them, generations and summary.json recording the
whole protocol.

    protocol = resolve_protocol(cfg)
    for each model the checkpoint rule names (eval.checkpoint: final | best_val | best_test):
        for each generation length:
            this harness's tasks (sudoku, countdown; any task under the experiment protocol):
                prompts -> sampler -> completions -> the protocol's scoring
            the papers' GSM8K, MATH and code tasks: lm-eval through lm_eval_model.run_tasks
    -> <out>/generations.jsonl   line 1: the protocol record (as in summary.json), then one row per
                                 completion (checkpoint, length, sample, prompt, completion, scores)
       <out>/summary.json        protocol, model, checkpoint rule, per task and length the metrics
                                 and the best length; for best_test every candidate's results

Accuracy is the mean over completions of each task's metric, except sudoku under the papers'
protocol: correct empty cells / empty cells pooled over the subset, as the releases count it.
With `eval.num_samples` = n > 1 completions per prompt (sampler.temperature > 0), pass@k
(metrics.py) is averaged over prompts. The models come from the checkpoint rule (checkpoints.py).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from gdsd_lightning.checkpoints import ModelRef, load_ref, models_for_rule
from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.data import load_split
from gdsd_lightning.diffusion.masking import generator_for
from gdsd_lightning.errors import UserError
from gdsd_lightning.generation import prompt_texts, sample
from gdsd_lightning.metrics import pass_at_k_mean
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.protocol import LM_EVAL, Protocol, device_record, resolve_protocol, versions
from gdsd_lightning.runs import write_json
from gdsd_lightning.tasks import Task, release_eval, task_from_config


# ---- data ---------------------------------------------------------------------------------
def protocol_examples(cfg: DictConfig, task: Task, protocol: Protocol, data: str | None) -> tuple[list[dict], dict]:
    """The examples the protocol evaluates and a record of where they come from: the data file
    (`data`, else task.test_path; the papers' sudoku / countdown need the published one) or the
    test split, then the random subset (the releases' draw: numpy RandomState(seed).choice without
    replacement, in draw order), then the first eval.num_examples."""
    path = data or cfg.task.test_path
    if path is None and protocol.name == "papers":
        raise UserError(f"eval.protocol=papers evaluates {task.name} on the published test file: pass DATA=<file> "
                        f"(--data; the d1 / GDSD releases' dataset/ folder has it) or set task.test_path")
    rows, source = (task.load(path), str(path)) if path else (load_split(task, cfg.task, "test")[0], "test split")
    record = {"source": source, "rows": len(rows)}
    if protocol.subset:
        size, seed = protocol.subset["size"], protocol.subset["seed"]
        if size > len(rows):
            raise UserError(f"eval.subset={size} is more than the {len(rows)} rows of {source}")
        rows = [rows[i] for i in np.random.RandomState(seed).choice(len(rows), size, replace=False)]
    rows = rows[: protocol.num_examples]
    record["evaluated"] = len(rows)
    return rows, record


# ---- this harness's tasks ----------------------------------------------------------------
def prompts_for(policy: DiffusionLM, task: Task, protocol: Protocol, examples: list[dict]) -> list[str]:
    if protocol.name == "papers":
        if not getattr(policy.tokenizer, "chat_template", None):
            raise UserError("the papers' sudoku / countdown prompts are chat prompts, but the model's tokenizer has no "
                            "chat template")
        return [release_eval.prompt_text(policy.tokenizer, task.name, ex, protocol.prompts) for ex in examples]
    return prompt_texts(task, examples, policy.tokenizer)


def score(task: Task, protocol: Protocol, completion: str, example: dict) -> dict:
    """One completion's scores: the releases' extraction under `papers`, else the task's own."""
    if protocol.name == "papers" and task.name == "sudoku":
        correct, empty = release_eval.sudoku_cells(completion, example)
        return {"correct_cells": correct, "empty_cells": empty, "correct": correct == empty}
    if protocol.name == "papers" and task.name == "countdown":
        return {"correct": release_eval.countdown_correct(completion, example, protocol.prompts)}
    return task.score(completion, example)


def aggregate(task: Task, protocol: Protocol, records: list[list[dict]]) -> dict:
    """Metrics of one length from the scores of every sample (records[i][s]: prompt i, sample s)."""
    flat = [r for per_prompt in records for r in per_prompt]
    if protocol.name == "papers" and task.name == "sudoku":
        metrics = {"accuracy": sum(r["correct_cells"] for r in flat) / sum(r["empty_cells"] for r in flat),
                   "solve_rate": statistics.fmean(float(r["correct"]) for r in flat)}
    elif protocol.name == "papers" and task.name == "countdown":
        metrics = {"accuracy": statistics.fmean(float(r["correct"]) for r in flat)}
    else:
        metrics = {name: statistics.fmean(float(r[name]) for r in flat) for name in task.metric_names}
    for k in protocol.pass_at:
        metrics[f"pass@{k}"] = pass_at_k_mean([sum(bool(r["correct"]) for r in p) for p in records],
                                              protocol.num_samples, k)
    return {key: round(value, 4) for key, value in metrics.items()} | {"n": len(records)}


@torch.no_grad()
def own_task_results(policy: DiffusionLM, task: Task, protocol: Protocol, examples: list[dict], prompts: list[str],
                     length: int, write, max_prompt_length: int | None) -> dict:
    """Sample `num_samples` completions per prompt at `length`, score them, write each row. Prompts
    keep their last `max_prompt_length` tokens (the experiment's task.max_prompt_length; the
    releases' evaluation code cuts none)."""
    settings, papers = protocol.sampler_at(length), protocol.name == "papers"
    records: list[list[dict]] = [[] for _ in examples]
    size = protocol.batch_size
    for draw in range(protocol.num_samples):
        generator = generator_for(protocol.seed + 1000 * length + draw, policy.device) if protocol.sampled else None
        for start in tqdm(range(0, len(examples), size), desc=f"{task.name} L={length} sample {draw}", unit="batch"):
            ids, mask = policy.encode_prompts(prompts[start:start + size], None if papers else max_prompt_length,
                                              add_special_tokens=papers)
            out = sample(policy, ids.to(policy.device), mask.to(policy.device), settings, generator)
            # the releases read the whole completion with its special tokens; the experiment cuts at EOS
            texts = policy.tokenizer.batch_decode(out.completions, skip_special_tokens=False) if papers \
                else policy.decode(out.completions)
            for i, text in enumerate(texts, start=start):
                scores = score(task, protocol, text, examples[i])
                records[i].append(scores)
                write({"length": length, "sample": draw, "index": i, "example": examples[i], "prompt": prompts[i],
                       "completion": text, **scores})
    return aggregate(task, protocol, records)


# ---- the whole evaluation ----------------------------------------------------------------
def with_best(per_length: dict[str, dict]) -> dict:
    """Per-length metrics plus "best": the length with the highest accuracy (the first on ties)."""
    best = max(per_length, key=lambda length: per_length[length]["accuracy"])
    return {**per_length, "best": {"length": int(best), **per_length[best]}}


def evaluate_model(policy: DiffusionLM, task: Task, protocol: Protocol, examples: list[dict], cfg: DictConfig,
                   write) -> dict[str, dict]:
    """{task name: {length: metrics, ..., "best": ...}} of one model at every length."""
    by_task: dict[str, dict[str, dict]] = {}
    if protocol.harness == LM_EVAL:
        from gdsd_lightning.commands.lm_eval_model import run_tasks

        for length in protocol.lengths:
            results, rows = run_tasks(policy, protocol, length)
            for row in rows:
                write({"length": length, **row})
            for name, metrics in results.items():
                by_task.setdefault(name, {})[str(length)] = metrics
    else:
        prompts = prompts_for(policy, task, protocol, examples)
        by_task[task.name] = {str(n): own_task_results(policy, task, protocol, examples, prompts, n, write,
                                                       cfg.task.max_prompt_length)
                              for n in protocol.lengths}
    return {name: with_best(per_length) for name, per_length in by_task.items()}


def pick_best_on_test(candidates: list[dict]) -> dict[str, dict]:
    """best_test: per task and length the candidate with the highest accuracy (it is named)."""
    chosen: dict[str, dict] = {}
    for name in candidates[0]["results"]:
        lengths = [k for k in candidates[0]["results"][name] if k != "best"]
        per_length = {}
        for length in lengths:
            best = max(candidates, key=lambda c: c["results"][name][length]["accuracy"])
            per_length[length] = {**best["results"][name][length], "checkpoint": best["checkpoint"]}
        chosen[name] = with_best(per_length)
    return chosen


def model_record(cfg: DictConfig, policy: DiffusionLM) -> dict:
    lora = policy.transformer is not policy.model
    return {"family": policy.family.name, "method": cfg.method.name, "lora": lora,
            "weights": policy.base_source, "dtype": str(next(policy.parameters()).dtype).removeprefix("torch.")}


def evaluate(cfg: DictConfig, ckpt: str | None = None, data: str | None = None, out: str | None = None) -> dict:
    """Evaluate `cfg`'s model(s) under its protocol; writes generations.jsonl and summary.json into
    `out` and returns the summary (with "out")."""
    protocol = resolve_protocol(cfg)
    task = task_from_config(cfg.task)
    if protocol.harness == LM_EVAL:
        if data is not None:
            raise UserError(f"--data {data}: lm-eval tasks read their own data sets; name a local task file in "
                            "lm-eval's format instead: eval.lm_eval_tasks=[path/to/task.yaml] (docs/evaluation.md)")
        examples, data_record, data_name = [], {"source": "lm-eval tasks", "tasks": list(protocol.lm_eval_tasks)}, "lm-eval"
    else:
        examples, data_record = protocol_examples(cfg, task, protocol, data)
        data_name = Path(data).stem if data else (Path(cfg.task.test_path).stem if cfg.task.test_path else "test")
    refs, run_dir = models_for_rule(cfg, ckpt, protocol.checkpoint)
    out_dir = Path(out) if out else default_out_dir(refs, run_dir, f"{data_name}_{protocol.name}_{protocol.checkpoint}")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    header = {"experiment": cfg.name, "checkpoint_rule": protocol.checkpoint, "protocol": protocol.record(),
              "data": data_record, "versions": versions(), "device": device_record(device)}
    candidates, model = [], None
    with open(out_dir / "generations.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for ref in refs:
            policy = load_ref(cfg, ref).to(device).eval()
            model = model or model_record(cfg, policy)

            def write(row: dict, label: str = ref.label) -> None:
                f.write(json.dumps({"checkpoint": label, **row}, default=str) + "\n")

            candidates.append({"checkpoint": ref.label,
                               "results": evaluate_model(policy, task, protocol, examples, cfg, write)})
            del policy
    results = pick_best_on_test(candidates) if protocol.checkpoint == "best_test" else candidates[0]["results"]
    summary = {**header, "model": model, "run": str(run_dir) if run_dir else None,
               "checkpoint": str(refs[0].source) if len(refs) == 1 else "per result (best_test)",
               "optimistic": protocol.checkpoint == "best_test", "results": results,
               **({"candidates": candidates} if len(candidates) > 1 else {})}
    if len(results) == 1:                     # one task: its best length's numbers at the top, for a quick look
        best = next(iter(results.values()))["best"]
        summary |= {"accuracy": best["accuracy"], "n": best.get("n")}
    write_json(out_dir / "summary.json", summary)
    return {**summary, "out": str(out_dir)}


def default_out_dir(refs: list[ModelRef], run_dir: Path | None, name: str) -> Path:
    """<run>/eval/<name>, or beside a single given model: <model dir>/eval/<name>."""
    if run_dir is not None:
        return run_dir / "eval" / name
    source = refs[0].source
    return (source if source.is_dir() else source.parent) / "eval" / name


def summary_line(summary: dict) -> str:
    """One line per task: accuracy at every length and the best, then where the files are."""
    lines = []
    for name, per_length in summary["results"].items():
        cells = " ".join(f"L{k}={v['accuracy']:.4f}" for k, v in per_length.items() if k != "best")
        lines.append(f"{name} ({summary['protocol']['name']} protocol, {summary['checkpoint_rule']}): {cells} "
                     f"best=L{per_length['best']['length']} {per_length['best']['accuracy']:.4f}")
    return "\n".join(lines + [f"wrote {summary['out']}/summary.json and generations.jsonl"])


def evaluate_experiment(experiment: str, overrides: list[str], ckpt: str | None = None, data: str | None = None,
                        out: str | None = None, protocol: str | None = None, checkpoint: str | None = None) -> str:
    """`eval`: load `experiment` (--protocol and --checkpoint are eval.protocol and eval.checkpoint), evaluate
    it, and return the summary's line."""
    chosen = [f"eval.{key}={value}" for key, value in (("protocol", protocol), ("checkpoint", checkpoint)) if value]
    return summary_line(evaluate(load_experiment(experiment, [*overrides, *chosen]), ckpt, data, out))
