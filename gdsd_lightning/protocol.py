"""Evaluation protocols: which harness, generation lengths, steps, block length, prompts, data
subset and few-shot count a reported number follows (docs/evaluation.md).

    protocol = resolve_protocol(cfg)     # from the experiment's `eval` and `sampler` sections
    protocol.sampler_at(length)          # the sampler settings at one generation length
    protocol.record()                    # what summary.json and the generations file carry

`papers` (eval.protocol=papers), the releases' protocol for the real models:
    sudoku, countdown   this harness; greedy; lengths 128 / 256 / 512; block 32; steps = length / 2;
                        a 256-item subset of the published test file drawn as the releases draw it
                        (numpy seed 42); their evaluation prompts with the "<reasoning>" prefill;
                        their answer extraction (tasks/release_eval.py)
    gsm8k               lm-eval gsm8k_cot, 8-shot, flexible-extract; lengths 128 / 256
    math                lm-eval minerva_math, its seven subjects, 4-shot, math_verify, unweighted
                        mean; lengths 256 / 512
    humaneval, mbpp     HumanEval 0-shot and MBPP 3-shot, pass@1; length 256; code in our sandbox
    The lm-eval tasks run with block 32 and 128 steps at every length, as the GDSD release's
    lm-eval scripts do (math_eval/llada_eval/lmeval_scripts/lmeval_batch_*.sh: STEPS=128).
`experiment` (the default), a protocol that fits the experiment, e.g. the tiny stand-ins that
    generate 16 tokens from plain prompts: the experiment's sampler, prompts and task metrics on its
    test split (or the given file).
Both sample at `sampler.temperature` (0: greedy); with `eval.num_samples` > 1 they report pass@k.
"""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from gdsd_lightning.config import PROJECT_ROOT
from gdsd_lightning.diffusion.sampler import SamplerConfig
from gdsd_lightning.errors import UserError
from gdsd_lightning.tasks.release_eval import PROMPT_FAMILIES

OWN_HARNESS, LM_EVAL = "gdsd_lightning", "lm-eval"
MINERVA_SUBJECTS = tuple(f"minerva_math_{s}" for s in ("algebra", "counting_and_prob", "geometry",
                                                       "intermediate_algebra", "num_theory", "prealgebra", "precalc"))
CODE_TASKS = ("humaneval", "mbpp")
PROTOCOLS = ("papers", "experiment")                    # eval.protocol
CHECKPOINT_RULES = ("final", "best_val", "best_test")   # eval.checkpoint (checkpoints.py)


@dataclass
class EvalConfig:
    """The `eval` section: the protocol an evaluation follows (`resolve_protocol`)."""

    batch_size: int = 64
    num_examples: Optional[int] = None     # None: the whole split (or subset); lm-eval: its `limit`
    protocol: str = "experiment"           # experiment (the experiment's sampler and prompts) | papers (the
                                           # releases': lengths, steps, prompts, subset, lm-eval)
    lengths: Optional[list[int]] = None    # generation lengths, each reported (None: the protocol's)
    steps: Optional[int] = None            # denoising steps at every length (None: the protocol's rule)
    block_length: Optional[int] = None     # None: 32 (papers) or sampler.block_length (experiment)
    subset: Optional[int] = None           # examples drawn at random from the data (None: papers 256, else all)
    subset_seed: int = 42                  # the releases' numpy seed for that draw
    prompts: str = "gdsd"                  # papers' sudoku / countdown prompts: gdsd (GDSD, ESPO) | d1 (d1, SPG, ...)
    num_samples: int = 1                   # completions per prompt; > 1 (at sampler.temperature > 0): pass@k
    pass_at: Optional[list[int]] = None    # the k of pass@k (None: 1, 2, 4, ... and num_samples)
    checkpoint: str = "final"              # final | best_val | best_test (optimistic: picked on the test set)
    lm_eval_tasks: Optional[list[str]] = None   # lm-eval task names or YAML files (None: the papers' tasks)
    fewshot: Optional[int] = None          # lm-eval few-shot count (None: each task's own)
    num_mc: int = 128                      # lm-eval loglikelihood requests: Monte-Carlo ELBO masks

    def problems(self, cfg: DictConfig) -> list[str]:
        """One sentence for each `eval` setting that no evaluation could accept, whatever the model
        (checked when the experiment loads, before training too); `resolve_protocol` adds the rules
        of each protocol and generation length."""
        problems = []
        if self.protocol not in PROTOCOLS:
            problems.append(f"eval.protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.checkpoint not in CHECKPOINT_RULES:
            problems.append(f"eval.checkpoint must be one of {', '.join(CHECKPOINT_RULES)}, got {self.checkpoint!r}")
        if self.prompts not in PROMPT_FAMILIES:
            problems.append(f"eval.prompts must be one of {', '.join(PROMPT_FAMILIES)}, got {self.prompts!r}")
        if self.num_samples < 1:
            problems.append(f"eval.num_samples must be at least 1, got {self.num_samples}")
        elif self.num_samples > 1 and cfg.sampler.temperature <= 0:
            problems.append(f"eval.num_samples={self.num_samples} needs sampler.temperature > 0 (greedy samples are "
                            "identical)")
        if self.lm_eval_tasks and self.protocol == "experiment":
            problems.append("eval.lm_eval_tasks needs eval.protocol=papers (the experiment protocol scores with the "
                            "task's own metrics)")
        return problems


@dataclass(frozen=True)
class PaperTask:
    """How the releases evaluate one task."""

    harness: str
    lengths: tuple[int, ...]
    steps: int | None                       # None: length / 2
    lm_eval_tasks: tuple[str, ...] = ()
    subset: int | None = None               # items drawn from the published test file


PAPER_TASKS = {
    "sudoku": PaperTask(OWN_HARNESS, (128, 256, 512), None, subset=256),
    "countdown": PaperTask(OWN_HARNESS, (128, 256, 512), None, subset=256),
    "gsm8k": PaperTask(LM_EVAL, (128, 256), 128, ("gsm8k_cot",)),
    "math": PaperTask(LM_EVAL, (256, 512), 128, MINERVA_SUBJECTS),
    "humaneval": PaperTask(LM_EVAL, (256,), 128, CODE_TASKS),
    "mbpp": PaperTask(LM_EVAL, (256,), 128, CODE_TASKS),
}
PAPER_BLOCK_LENGTH = 32


@dataclass(frozen=True)
class Protocol:
    name: str                               # papers | experiment
    task: str
    harness: str                            # gdsd_lightning | lm-eval
    lengths: tuple[int, ...]
    steps: dict[int, int]                   # per generation length
    block_length: int | None                # None: the Dream sampler (whole sequence)
    sampler: dict                           # the sampler section but its length, steps and block
    seed: int
    num_samples: int                        # completions per prompt
    pass_at: tuple[int, ...]                # k of the pass@k reported (num_samples > 1)
    checkpoint: str                         # final | best_val | best_test
    prompts: str                            # the prompt family or the experiment's prompt style
    subset: dict | None = None              # {"size": n, "seed": s}: drawn from the data file
    num_examples: int | None = None         # then only the first n (eval.num_examples)
    lm_eval_tasks: tuple[str, ...] = ()
    fewshot: int | None = None              # None: each lm-eval task's own count
    num_mc: int = 128                       # lm-eval loglikelihood: Monte-Carlo masks per request
    batch_size: int = 64
    notes: list[str] = field(default_factory=list)

    @property
    def sampled(self) -> bool:
        return self.sampler["temperature"] > 0

    def sampler_at(self, length: int) -> SamplerConfig:
        """The sampler (generation.sample's input) at generation length `length`."""
        return SamplerConfig(**self.sampler, gen_length=length, steps=self.steps[length],
                             block_length=self.block_length or length)

    def record(self) -> dict:
        """The whole protocol, as written into summary.json and the generations file."""
        return json.loads(json.dumps(asdict(self)))      # as it reads back from the file: lists, string keys


def default_pass_at(n: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [k for k in (2 ** i for i in range(n.bit_length())) if k <= n]
    return tuple(dict.fromkeys([*ks, n]))


def resolve_protocol(cfg: DictConfig) -> Protocol:
    """The protocol an evaluation of `cfg` follows; one sentence naming the key when the settings
    do not fit together."""
    e, s, task = cfg.eval, cfg.sampler, cfg.task.name
    problems = EvalConfig(**OmegaConf.to_container(e)).problems(cfg)
    if e.protocol not in PROTOCOLS:
        raise UserError("; ".join(problems))
    # every sampler setting but the ones each generation length sets (sampler_at)
    sampler = {key: value for key, value in OmegaConf.to_container(s).items()
               if key not in ("gen_length", "steps", "block_length")} | {"temperature": float(s.temperature)}
    notes = []
    if e.protocol == "papers":
        if task not in PAPER_TASKS:
            raise UserError(f"eval.protocol=papers knows the tasks {', '.join(PAPER_TASKS)}, not {task!r}; "
                            "use eval.protocol=experiment")
        paper = PAPER_TASKS[task]
        lengths = tuple(e.lengths or paper.lengths)
        block = e.block_length or PAPER_BLOCK_LENGTH
        steps = {n: e.steps or paper.steps or n // 2 for n in lengths}
        harness, prompts = paper.harness, e.prompts if paper.harness == OWN_HARNESS else "lm-eval task"
        subset = {"size": e.subset or paper.subset, "seed": e.subset_seed} if paper.subset or e.subset else None
        lm_eval_tasks = tuple(e.lm_eval_tasks or paper.lm_eval_tasks)
        if harness == LM_EVAL and e.subset:
            problems.append("eval.subset draws from this harness's data files; lm-eval tasks take eval.num_examples "
                            "(their limit)")
        if s.temperature > 0:
            notes.append(f"sampled at temperature {s.temperature} (the papers' protocol is greedy)")
    else:
        lengths = tuple(e.lengths or [s.gen_length])
        block = e.block_length or s.block_length
        steps = {n: e.steps or max(1, s.steps * n // s.gen_length) for n in lengths}   # the experiment's tokens per step
        harness, prompts = OWN_HARNESS, f"task prompts ({cfg.task.prompt_style})"
        subset = {"size": e.subset, "seed": e.subset_seed} if e.subset else None
        lm_eval_tasks = ()
    if s.kind == "dream":
        block = None
    protocol = Protocol(e.protocol, task, harness, lengths, steps, block, sampler, cfg.seed, e.num_samples,
                        tuple(e.pass_at or default_pass_at(e.num_samples)) if e.num_samples > 1 else (), e.checkpoint,
                        prompts, subset, e.num_examples, lm_eval_tasks, e.fewshot, e.num_mc, e.batch_size, notes)
    for n in lengths:
        at_length = protocol.sampler_at(n).problems()
        if at_length:
            problems.append(f"at generation length {n} (eval.lengths, eval.steps, eval.block_length): "
                            + "; ".join(at_length))
            break
    if problems:
        raise UserError("; ".join(problems))
    return protocol


# ---- where a number was computed ---------------------------------------------------------
def versions() -> dict:
    """Versions of this harness (with its git commit) and of the libraries a number depends on."""
    out = {"gdsd_lightning": package_version("gdsd_lightning"), "git_commit": git_commit()}
    for name in ("torch", "transformers", "peft", "lightning", "lm_eval", "math-verify", "datasets"):
        out[name] = package_version(name)
    out["python"] = platform.python_version()
    return out


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """HEAD of the harness's checkout, with '-dirty' when it has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def device_record(device) -> dict:
    """The device and, on CUDA, its name; the CPU thread count otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "count": torch.cuda.device_count()}
    return {"type": device.type, "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
