"""Every model of this harness as an lm-evaluation-harness model, registered as `gdsd_lightning`.

    python -m gdsd_lightning.commands.lm_eval_cli --model gdsd_lightning --batch_size 8 \\
        --model_args path=runs/gdsd_llada_gsm8k/latest/final,gen_length=256,steps=128,block_length=32 \\
        --tasks gsm8k_cot,minerva_math,humaneval,mbpp --output_path out/

(lm_eval_cli.py: lm-eval's command line with this model registered and the sandboxed code tasks
of gdsd_lightning/lm_eval_tasks included; a plain `lm_eval` cannot find this model, see there.)
In Python, `DiffusionHarnessLM(policy=model, ...)` wraps an already loaded model.

model_args (all optional except a model):
    path=DIR|HUB_ID     a saved model of this harness (full or LoRA), or with family= a base
    family=NAME         llada | dream | tiny-llada | tiny-dream, for a base that is not saved here
    lora=DIR            a peft adapter directory put on the base (the releases' checkpoints)
    experiment=NAME, ckpt=FILE      a Lightning checkpoint of one of this harness's experiments
    sampler=block|dream gen_length=256 steps=128 block_length=32 temperature=0 remasking=low_confidence
    top_p=0.95 eps=0.001 fast_threshold= kv_cache=False kv_refresh_every= gumbel_dtype=float64
                                                                              (generation.sample)
    seed=1234 num_mc=128 mc_batch_size=32 check_greedy=False dtype=auto
    (the batch size and device are lm-eval's own --batch_size and --device)

generate_until: the prompts (left-padded, with the tokenizer's own special tokens, as the releases
encode them) get `gen_length` tokens from the sampler; a completion is decoded with its special
tokens, cut at the first stop sequence, then its special tokens dropped. The request's
max_gen_toks, do_sample and temperature are not used: the model_args fix them, as in the releases.

loglikelihood: the Monte-Carlo coupled ELBO of the continuation given the context,

    log p(x | c) ~ 1/K sum_k 1/2 [ sum_{l in M_k} log p(x_l | z_k)_l / t_k
                                   + sum_{l not in M_k} log p(x_l | z_bar_k)_l / t_bar_k ]

with t_k = |M_k| / (L+1) and t_bar_k = (L - |M_k|) / (L+1) for a continuation of L tokens, over
K = num_mc stratified masks M_k (diffusion/masking.py, estimators.coupled_elbo), drawn
from a generator seeded by `seed` and the request's text, so a request gets the same estimate in
every run. is_greedy (check_greedy=True): greedy decoding of the continuation, one token per step,
reproduces it.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from gdsd_lightning.diffusion.estimators import coupled_elbo, coupled_logprobs
from gdsd_lightning.diffusion.masking import generator_for, stratified_mask
from gdsd_lightning.diffusion.sampler import SamplerConfig
from gdsd_lightning.errors import UserError
from gdsd_lightning.checkpoints import load_policy
from gdsd_lightning.metrics import pass_at_k_mean
from gdsd_lightning.generation import sample
from gdsd_lightning.models.adapter import FAMILY_FILE, DiffusionLM
from gdsd_lightning.models.families import FAMILIES
from gdsd_lightning.protocol import MINERVA_SUBJECTS, Protocol

TASKS_DIR = Path(__file__).parents[1] / "lm_eval_tasks"   # the sandboxed humaneval / mbpp tasks


def load_model(path: str | None = None, family: str | None = None, lora: str | None = None,
               experiment: str | None = None, ckpt: str | None = None, dtype: torch.dtype = torch.float32
               ) -> DiffusionLM:
    """The model named by the model_args (see the module docstring)."""
    if experiment:
        from gdsd_lightning.experiment import load_experiment

        return load_policy(load_experiment(experiment, [f"model.dtype={str(dtype).removeprefix('torch.')}"]), ckpt)[0]
    if not path:
        raise UserError("model_args need path=<saved model or hub id> (with family= for a base) or experiment=<name>")
    if (Path(path) / FAMILY_FILE).is_file():
        policy = DiffusionLM.load(path, dtype)
    elif family in FAMILIES:
        policy = DiffusionLM.load_base(FAMILIES[family], path, dtype)
    else:
        raise UserError(f"{path} is not a saved gdsd_lightning model; name its family with family= "
                        f"({', '.join(sorted(FAMILIES))})")
    if lora:
        from peft import PeftModel

        policy.model = PeftModel.from_pretrained(policy.model, lora)
    return policy


def optional(kind):
    """A model_arg that may be left empty (`fast_threshold=`): None."""
    return lambda value: None if value in (None, "") else kind(value)


# The sampler's model_args and how each string lm-eval hands over becomes a SamplerConfig field
MODEL_ARG_TYPES = {"gen_length": int, "steps": int, "block_length": int, "temperature": float, "remasking": str,
                   "top_p": float, "eps": float, "fast_threshold": optional(float), "kv_refresh_every": optional(int),
                   "kv_cache": lambda value: value if value in ("dual", "prefix") else bool(value), "gumbel_dtype": str}
MODEL_ARG_DEFAULTS = {"gen_length": 256, "steps": 128, "block_length": 32}   # the releases' lm-eval scripts'


def sampler_from_model_args(kind: str, settings: dict) -> SamplerConfig:
    """The sampler of the model_args: `kind` (the model_arg sampler) and the given settings over
    MODEL_ARG_DEFAULTS and SamplerConfig's, each parsed once; the Dream sampler decodes the whole
    length as one block."""
    parsed = {key: MODEL_ARG_TYPES[key](value) for key, value in {**MODEL_ARG_DEFAULTS, **settings}.items()}
    if kind != "block":
        parsed["block_length"] = parsed["gen_length"]
    return SamplerConfig(kind=kind, **parsed)


@register_model("gdsd_lightning")
class DiffusionHarnessLM(LM):
    """lm-eval's LM interface on a DiffusionLM with this harness's samplers and ELBO estimator."""

    def __init__(self, path: str | None = None, family: str | None = None, lora: str | None = None,
                 experiment: str | None = None, ckpt: str | None = None, sampler: SamplerConfig | str | None = None,
                 batch_size: int | str | None = 1, seed: int = 1234, num_mc: int = 128, mc_batch_size: int = 32,
                 check_greedy: bool = False, dtype: str = "auto", device: str | None = None,
                 policy: DiffusionLM | None = None, max_batch_size: int | None = None,
                 trust_remote_code: bool | None = None, **settings):
        """`sampler`: a whole SamplerConfig (Python callers: the evaluation protocol's), or the model_arg
        sampler=block|dream with the other sampler settings as model_args (`settings`, parsed once into
        a SamplerConfig by `sampler_from_model_args`). `policy`: an already loaded model (the loading
        arguments are then unused). `max_batch_size` and `trust_remote_code` are lm-eval's, not used
        (the family decides)."""
        unknown = sorted(set(settings) - set(MODEL_ARG_TYPES))
        if unknown or (isinstance(sampler, SamplerConfig) and settings):
            raise UserError(f"unknown model_args for gdsd_lightning: {', '.join(unknown or sorted(settings))} (see "
                            "gdsd_lightning/commands/lm_eval_model.py)")
        super().__init__()
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"     # lm-eval's --device defaults to cuda
        if dtype == "auto":
            dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
        if policy is None:
            policy = load_model(path, family, lora, experiment, ckpt, getattr(torch, dtype))
        self.policy = policy.to(device).eval()
        self.sampler = sampler if isinstance(sampler, SamplerConfig) else \
            sampler_from_model_args(sampler or ("dream" if policy.family.shift_logits else "block"), settings)
        problems = self.sampler.problems()
        if problems:
            raise UserError(f"gdsd_lightning model_args do not fit together (sampler.kind is the model_arg sampler, "
                            f"sampler.<name> the model_arg <name>): {'; '.join(problems)}")
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 1     # "auto": one prompt at a time
        self.seed, self.num_mc, self.mc_batch_size = int(seed), int(num_mc), int(mc_batch_size)
        self.check_greedy = bool(check_greedy)
        self._device = torch.device(device)

    # ---- generation ---------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Completions of every request, longest prompts first in batches of `batch_size`; the
        sampling seed of a batch is `seed` + the index of its first prompt in that order."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].args[0]))
        texts: list[str] = [""] * len(requests)
        tokenizer = self.policy.tokenizer
        for start in tqdm(range(0, len(order), self.batch_size), desc="generate_until", disable=disable_tqdm):
            rows = order[start:start + self.batch_size]
            ids, mask = self.policy.encode_prompts([requests[i].args[0] for i in rows], add_special_tokens=True)
            out = sample(self.policy, ids.to(self.device), mask.to(self.device), self.sampler,
                         generator_for(self.seed + start, self.device))
            for i, completion in zip(rows, out.completions):
                until = requests[i].args[1].get("until") or []
                texts[i] = cut_at_stops(tokenizer, tokenizer.decode(completion, skip_special_tokens=False),
                                        [until] if isinstance(until, str) else until)
                self.cache_hook.add_partial("generate_until", requests[i].args, texts[i])
        return texts

    # ---- likelihood ---------------------------------------------------------------------
    @torch.no_grad()
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = []
        for request in tqdm(requests, desc="loglikelihood", disable=disable_tqdm):
            context, continuation = request.args
            prefix, target = self.encode_pair(context, continuation)
            seed = self.seed * 2**32 + zlib.crc32(f"{context}\x00{continuation}".encode())
            results.append((self.elbo(prefix, target, seed), self.is_greedy(prefix, target)))
            self.cache_hook.add_partial("loglikelihood", request.args, results[-1])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise UserError("the gdsd_lightning lm-eval model has no rolling (perplexity) log-likelihood; "
                        "use generation or multiple-choice tasks")

    def encode_pair(self, context: str, continuation: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Context and continuation ids, the continuation's leading spaces taken from the end of the
        context and the pair encoded whole (the release's _encode_pair)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        tokenizer = self.policy.tokenizer
        whole = tokenizer(context + continuation)["input_ids"]
        prefix = tokenizer(context)["input_ids"] if context else []
        return torch.tensor(prefix, dtype=torch.long), torch.tensor(whole[len(prefix):], dtype=torch.long)

    @torch.no_grad()
    def elbo(self, prefix: torch.Tensor, target: torch.Tensor, seed: int) -> float:
        """Mean coupled ELBO of `target` after `prefix` over `num_mc` stratified masks."""
        if target.numel() == 0:
            return 0.0
        generator = generator_for(seed, self.device)
        masked, _ = stratified_mask(self.num_mc, target.numel(), generator)
        total = 0.0
        for chunk in masked.split(self.mc_batch_size):
            rows = chunk.shape[0]
            prompt = prefix.to(self.device).expand(rows, -1)
            completion = target.to(self.device).expand(rows, -1)
            view, complement = coupled_logprobs(self.policy, prompt, torch.ones_like(prompt), completion, chunk)
            total += float(coupled_elbo(view, complement, chunk).sum())
        return total / self.num_mc

    @torch.no_grad()
    def is_greedy(self, prefix: torch.Tensor, target: torch.Tensor) -> bool:
        """Whether greedy decoding, one token per step, gives `target` (False unless check_greedy)."""
        if not self.check_greedy or target.numel() == 0:
            return False
        n = target.numel()
        one_by_one = self.sampler.at(kind="block", gen_length=n, block_length=n, steps=n, temperature=0.0,
                                     fast_threshold=None, kv_cache=False, kv_refresh_every=None)
        prompt = prefix.to(self.device).unsqueeze(0)
        out = sample(self.policy, prompt, torch.ones_like(prompt), one_by_one)
        return bool(torch.equal(out.completions[0].cpu(), target))

    # ---- lm-eval's chat-template hooks (--apply_chat_template) --------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.policy.tokenizer, "name_or_path", "")).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.policy.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                         add_generation_prompt=add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.policy.tokenizer, "chat_template", None)

    @property
    def device(self) -> torch.device:
        return self._device


def cut_at_stops(tokenizer, text: str, stops: list[str]) -> str:
    """`text` up to its first stop sequence, then with the special tokens removed (re-tokenized
    and decoded without them, as the release does)."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)


# ---- the papers' lm-eval tasks, run from `evaluate` ---------------------------------------
# The metric a task reports (metric, filter), as the GDSD release's summarize_results.py reads it;
# a task not listed here reports its first metric.
HEADLINE = {"gsm8k_cot": ("exact_match", "flexible-extract"), "humaneval": ("pass@1", "none"),
            "mbpp": ("pass@1", "none"), **{s: ("math_verify", "none") for s in MINERVA_SUBJECTS}}
# The hub data set behind each of those tasks (checked offline before lm-eval indexes its tasks)
MATH_SUBJECT_CONFIGS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                        "prealgebra", "precalculus")          # EleutherAI/hendrycks_math, in MINERVA_SUBJECTS' order
HUB_DATA = {"gsm8k_cot": ("openai/gsm8k", "main"), "mbpp": ("google-research-datasets/mbpp", "full"),
            **{s: ("EleutherAI/hendrycks_math", c) for s, c in zip(MINERVA_SUBJECTS, MATH_SUBJECT_CONFIGS)}}
MINERVA_MEAN = "minerva_math"


def require_hub_data(specs: list[str]) -> None:
    """Fail in seconds, in one sentence, when a hub task's data set can be neither downloaded nor
    read from the local cache."""
    from gdsd_lightning.hub import offline_unless_reachable, unreachable

    if offline_unless_reachable():
        return
    import datasets

    for spec in specs:
        if spec not in HUB_DATA:
            continue
        try:
            datasets.load_dataset_builder(*HUB_DATA[spec])
        except (ConnectionError, FileNotFoundError, ValueError):
            raise unreachable(f"lm-eval task {spec}'s data set", HUB_DATA[spec][0],
                              "rerun, or give a local task file in lm-eval's format instead: "
                              "eval.lm_eval_tasks=[path/to/task.yaml] (docs/evaluation.md)") from None


def task_manager(specs: list[str]):
    """lm-eval's TaskManager with the sandboxed code tasks; lm-eval's own tasks are indexed (a few
    seconds) only when a spec names one."""
    from lm_eval.tasks import TaskManager

    own = {p.stem for p in TASKS_DIR.glob("*.yaml")}
    needs_defaults = any(not spec.endswith((".yaml", ".yml")) and spec not in own for spec in specs)
    return TaskManager(include_path=[str(TASKS_DIR)], include_defaults=needs_defaults)


def headline(task: str, metrics: dict) -> tuple[str, str]:
    """(metric, filter) that `task` reports."""
    if task in HEADLINE:
        return HEADLINE[task]
    for key, value in metrics.items():
        if "," in key and "_stderr" not in key and isinstance(value, (int, float)):
            metric, _, filter_name = key.partition(",")
            return metric, filter_name
    raise UserError(f"lm-eval task {task} reported no metric")


def run_tasks(policy: DiffusionLM, protocol: Protocol, length: int) -> tuple[dict, list[dict]]:
    """The protocol's lm-eval tasks at generation length `length`, `num_samples` times (model seed
    `seed` + sample index). Returns per task {"accuracy": the headline metric's mean over every
    document and sample, "metric", "n", "metrics": lm-eval's of the first sample, "pass@k"...} (the
    seven minerva_math subjects also as their unweighted mean) and one row per completion."""
    from lm_eval import simple_evaluate

    specs = list(protocol.lm_eval_tasks)
    require_hub_data(specs)
    manager = task_manager(specs)
    sampler = protocol.sampler_at(length)
    scores: dict[str, dict[int, list[float]]] = {}     # task -> doc -> headline score per sample
    results, rows = {}, []
    for draw in range(protocol.num_samples):
        lm = DiffusionHarnessLM(policy=policy, sampler=sampler, batch_size=protocol.batch_size,
                                seed=protocol.seed + draw, num_mc=protocol.num_mc, device=str(policy.device))
        out = simple_evaluate(model=lm, tasks=specs, num_fewshot=protocol.fewshot, limit=protocol.num_examples,
                              task_manager=manager, log_samples=True)
        for task, entries in out["samples"].items():          # leaf tasks (a group has no samples)
            metrics = out["results"][task]
            metric, filter_name = headline(task, metrics)
            results.setdefault(task, {"metric": f"{metric},{filter_name}", "n": metrics.get("sample_len"),
                                      "metrics": {k: v for k, v in metrics.items() if "," in k}})
            for entry in entries:
                rows.append({"sample": draw, "task": task, "doc_id": entry["doc_id"], "filter": entry["filter"],
                             "prompt": entry["arguments"][0][0],          # [(context, gen_kwargs or continuation)]
                             "completion": entry["resps"][0][0] if entry["resps"] else None,
                             "extracted": entry["filtered_resps"], "target": entry["target"],
                             **{m: entry[m] for m in entry.get("metrics", []) if m in entry}})
                if entry["filter"] == filter_name:
                    scores.setdefault(task, {}).setdefault(entry["doc_id"], []).append(float(entry[metric]))
    for task, docs in scores.items():
        per_doc = list(docs.values())
        results[task]["accuracy"] = sum(map(sum, per_doc)) / sum(map(len, per_doc))
        for k in protocol.pass_at:
            results[task][f"pass@{k}"] = pass_at_k_mean([sum(s >= 1.0 for s in d) for d in per_doc], len(per_doc[0]), k)
    subjects = [results[s] for s in MINERVA_SUBJECTS if s in results]
    if len(subjects) == len(MINERVA_SUBJECTS):
        results[MINERVA_MEAN] = {"metric": "unweighted mean of the 7 subjects' math_verify,none",
                                 "n": sum(s["n"] or 0 for s in subjects),
                                 **{key: sum(s[key] for s in subjects) / len(subjects)
                                    for key in ("accuracy", *(f"pass@{k}" for k in protocol.pass_at))}}
    return results, rows
