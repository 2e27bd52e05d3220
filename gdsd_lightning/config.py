"""Structured experiment configs: one YAML per experiment, composed from base files, overridden
from the command line, validated at start-up (unknown keys, wrong types, impossible combinations).

    cfg = load_experiment("gdsd_tiny_sudoku", ["trainer.max_steps=50", "method.psi=10"])

An experiment YAML may start with `extends: [_base/tiny.yaml, ...]` (paths relative to
experiments/); later files and the command line win. The command line may add files of its own,
`extends=_base/cpu_smoke.yaml` (repeatable), merged in order after the experiment and before the
key=value overrides.
The `method` section is validated against the chosen objective's own config class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from gdsd_lightning.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOGGERS = ("tensorboard", "csv", "wandb")
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"


@dataclass
class TaskConfig:
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


@dataclass
class ModelConfig:
    family: str = "tiny-llada"             # tiny-llada | tiny-dream (built offline) | llada | dream (hub)
    path: Optional[str] = None             # a saved model directory, or for llada/dream a hub id or local
                                           # copy (default: the family's hub id); tiny: None builds fresh
    init_from: Optional[str] = None        # experiment whose latest final model is the base
    dtype: str = "float32"                 # weights as loaded: float32 | bfloat16 | float16
    gradient_checkpointing: bool = False   # recompute each decoder layer in the backward pass
    lora_r: int = 0                        # LoRA rank; 0 trains the full weights
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: Optional[list[str]] = None   # default: all seven linears of each decoder layer
    quantization: Optional[str] = None     # nf4: 4-bit NF4 base weights under LoRA (QLoRA, bitsandbytes; CUDA only)
    attn_implementation: str = "sdpa"      # loaded weights: transformers' sdpa | flash_attention_2 | eager
    hidden_size: int = 128                 # the tiny families' shape (ignored when loading weights)
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 256


@dataclass
class SamplerConfig:
    kind: str = "block"                    # block (LLaDA) | dream
    gen_length: int = 16
    block_length: int = 16
    steps: int = 8
    temperature: float = 0.0
    remasking: str = "low_confidence"      # low_confidence | random
    top_p: float = 0.95                    # dream sampler only
    eps: float = 1e-3                      # dream sampler only
    fast_threshold: Optional[float] = None # fast mode (block sampler): also commit every proposal above this
                                           # confidence each step; None: the exact schedule only (default)
    kv_cache: Any = False                  # fast mode (block sampler): true / dual: within a block, run only the
                                           # block's tokens against cached keys/values of the rest; prefix: run the
                                           # block and its suffix against the cached prefix (Fast-dLLM's; approximate)
    kv_refresh_every: Optional[int] = None # with kv_cache: also rebuild the cache every n steps of a block
                                           # (fresher keys, fewer cached steps); None: once per block
    gumbel_dtype: str = "float64"          # block sampler's Gumbel noise: float64 | model (the upstream
                                           # trainers: the logits' dtype, bf16 for the real models)


@dataclass
class RolloutConfig:
    prompts_per_step: int = 8              # prompts per rollout batch (per rank)
    num_generations: int = 8               # G completions per prompt
    temperature: float = 1.0               # sampling temperature during training rollouts
    passk: int = 1                         # attempts per row (d-OPSD's pass@k)
    passk_keep: str = "first_correct"      # first_correct: stop at a correct attempt, else keep the last |
                                           # best_reward: run all attempts, keep the best (ties: the later)
    mismatch_every: int = 1                # with sampler.kv_cache or fast_threshold: measure the rollout's
                                           # mismatch to the exact sampler every n rollouts (0: never; one
                                           # uncached forward more per cached step; docs/sampling.md)
    importance_correction: str = "none"    # none | tis | mis: weight each row (token) by the exact-to-sampler
                                           # probability ratio (objectives/base.py, importance_weights)
    importance_cap: float = 2.0            # C of the correction: tis caps the ratio at C, mis zeroes above C
    sampler: dict = field(default_factory=dict)   # fast-mode keys of `sampler` for the rollouts only (e.g.
                                           # {kv_cache: true, fast_threshold: 0.9}: fast rollouts, exact evaluation)
    dropout: bool = False                  # sample in train mode, dropout active (the releases generate inside
                                           # their training step); False: eval mode
    decode: str = "first_eos"              # the text the reward reads: first_eos (cut at the first EOS) | all (all
                                           # L tokens, special tokens dropped: the releases) | special (all, kept: d-OPSD)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 0
    scheduler: str = "constant"            # constant | cosine
    grad_clip: float = 1.0


@dataclass
class TrainerConfig:
    max_steps: int = 100                   # optimiser steps
    max_rollouts: Optional[int] = None     # also stop after this many rollout batches (skipped ones count)
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"                 # auto, ddp, ... (Lightning's names) or fsdp: FSDP2 (ModelParallelStrategy)
    precision: str = "32-true"
    log_every_n_steps: int = 1
    val_every_n_steps: int = 50            # optimiser steps between periodic evaluations
    checkpoint_every_n_steps: int = 50     # a multiple of val_every_n_steps: saved after that evaluation
    ref_sync_every_n_steps: int = 0        # copy policy -> reference every N optimiser steps (0: never)
    max_skipped_in_a_row: int = 200        # stop when this many rollouts in a row give no step
    max_bad_steps_in_a_row: int = 10       # stop after this many non-finite losses / gradients in a row
    logger: str = "tensorboard"            # Lightning loggers, comma-separated: tensorboard, csv, wandb
    logger_project: Optional[str] = None   # W&B project (default: the experiment's name)


@dataclass
class EvalConfig:
    batch_size: int = 64
    num_examples: Optional[int] = None     # None: the whole split (or subset); lm-eval: its `limit`
    protocol: str = "experiment"           # experiment (the experiment's sampler and prompts) | papers (the
                                           # releases': lengths, steps, prompts, subset, lm-eval; protocol.py)
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


@dataclass
class ExperimentConfig:
    name: str = "unnamed"
    description: str = ""
    seed: int = 0
    batch_size: int = 64                   # SFT examples per optimiser step
    runs_dir: str = "runs"
    run_name: Optional[str] = None         # default: a timestamp
    resume: Optional[str] = None           # a last.ckpt to continue from
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    method: Any = field(default_factory=lambda: {"name": "sft"})  # validated by the objective
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def experiment_path(name: str) -> Path:
    """experiments/<name>.yaml, or `name` itself when it is a path to a YAML file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = EXPERIMENTS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_experiments())
        raise UserError(f"unknown experiment {name!r}; known experiments: {known}")
    return path


def overlay_path(name: str) -> Path:
    """A command-line `extends=` file: relative to experiments/ (or as given)."""
    for path in (EXPERIMENTS_DIR / name, Path(name)):
        if path.is_file():
            return path.resolve()
    raise UserError(f"extends={name}: no such file in {EXPERIMENTS_DIR} or the working directory")


def list_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def describe_experiments() -> str:
    """One line per experiment: its name and description."""
    names = list_experiments()
    width = max(map(len, names))
    return "\n".join(f"{name:<{width}}  {read_yaml(experiment_path(name)).get('description', '')}" for name in names)


def read_yaml(path: Path) -> DictConfig:
    """A YAML file with its `extends` chain merged in (parents first)."""
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends: report file and reason
        raise UserError(f"{path} is not valid YAML: {err}") from None
    parents = raw.pop("extends", []) if isinstance(raw, DictConfig) else []
    merged = OmegaConf.create()
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = OmegaConf.merge(merged, read_yaml((path.parent / parent).resolve()))
    return OmegaConf.merge(merged, raw)


def _valid_keys(schema: DictConfig, full_key: str) -> str:
    """Comma-separated keys valid at the parent of `full_key` in `schema`."""
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    node = OmegaConf.select(schema, parent) if parent else schema
    keys = sorted(node.keys()) if isinstance(node, DictConfig) else []
    return ", ".join(keys)


def merge_checked(schema: DictConfig, *sources: DictConfig, where: str, prefix: str = "") -> DictConfig:
    """Merge `sources` into the structured `schema`; an unknown key or wrong type becomes a
    `UserError` naming the key and the valid ones."""
    try:
        return OmegaConf.merge(schema, *sources)
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = err.full_key or str(err)
        raise UserError(f"unknown config key {prefix + key!r} in {where}; "
                        f"valid keys here: {_valid_keys(schema, key)}") from None
    except ValidationError as err:
        raise UserError(f"config key {prefix + err.full_key!r} in {where}: {err.msg}") from None


def load_run_config(path: Path) -> DictConfig:
    """A run's saved config.yaml read through today's schema (keys added since get their defaults)."""
    saved = OmegaConf.load(path)
    cfg = merge_checked(OmegaConf.structured(ExperimentConfig), saved, where=str(path))
    cfg.method = validate_method(cfg.method, str(path))
    return cfg


def load_experiment(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Load, merge and validate an experiment; returns a read-only structured config."""
    path = experiment_path(name)
    overrides = list(overrides or [])
    try:                                     # extends=<file> (repeatable): merged in order after the experiment
        entries = [OmegaConf.from_dotlist([o]).extends for o in overrides if o.startswith("extends=")]
        cli = OmegaConf.from_dotlist([o for o in overrides if not o.startswith("extends=")])
    except Exception as err:
        raise UserError(f"cannot parse command-line overrides {overrides}: {err}") from None
    where = f"{path} or the command-line overrides"
    files = [f for entry in entries for f in ([entry] if isinstance(entry, str) else entry)]   # a=x or a=[x,y]
    overlays = [read_yaml(overlay_path(f)) for f in files]
    cfg = merge_checked(OmegaConf.structured(ExperimentConfig), read_yaml(path), *overlays, cli, where=where)
    if cfg.name == "unnamed":
        cfg.name = path.stem
    cfg.method = validate_method(cfg.method, where)
    check_combinations(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def validate_method(method: DictConfig, where: str) -> DictConfig:
    """Validate the `method` section against the named objective's config dataclass."""
    from gdsd_lightning.objectives import OBJECTIVES  # objectives import config types

    name = method.get("name")
    if name not in OBJECTIVES:
        raise UserError(f"unknown method.name {name!r} in {where}; known methods: {', '.join(sorted(OBJECTIVES))}")
    schema = OmegaConf.structured(OBJECTIVES[name].Config)
    merged = merge_checked(schema, method, where=where, prefix="method.")
    wrapped = OmegaConf.create({"method": merged})
    return wrapped.method


def sampler_problems(sampler: DictConfig) -> list[str]:
    """One sentence for each setting of a sampler section (the experiment's, an evaluation
    length's, lm-eval's model_args) that generation.sample cannot run, naming its sampler.* key."""
    s, problems = sampler, []
    if s.kind not in ("block", "dream"):
        problems.append(f"sampler.kind must be 'block' or 'dream', got {s.kind!r}")
    if s.gumbel_dtype not in ("float64", "model"):
        problems.append(f"sampler.gumbel_dtype must be 'float64' or 'model', got {s.gumbel_dtype!r}")
    if s.block_length < 1 or s.gen_length % s.block_length:
        problems.append(f"sampler.block_length ({s.block_length}) must divide sampler.gen_length ({s.gen_length})")
    elif s.steps % (s.gen_length // s.block_length):
        problems.append(f"sampler.steps ({s.steps}) must be a multiple of the number of blocks ({s.gen_length // s.block_length})")
    if s.steps < 1 or s.steps > s.gen_length:
        problems.append(f"sampler.steps must be in 1..gen_length ({s.gen_length}), got {s.steps}")
    if s.remasking not in ("low_confidence", "random"):
        problems.append(f"sampler.remasking must be 'low_confidence' or 'random', got {s.remasking!r}")
    if s.kv_cache not in (False, True, "dual", "prefix"):
        problems.append(f"sampler.kv_cache must be false, true (dual), 'dual' or 'prefix', got {s.kv_cache!r}")
    if s.fast_threshold is not None and not (0.0 < s.fast_threshold <= 1.0):
        problems.append(f"sampler.fast_threshold must be in (0, 1], got {s.fast_threshold}")
    fast = [f"sampler.{key}" for key in ("fast_threshold", "kv_cache") if s[key] not in (None, False)]
    if fast and s.kind != "block":
        problems.append(f"{' and '.join(fast)}: fast mode exists for the block sampler only, not sampler.kind={s.kind}")
    if s.fast_threshold is not None and s.remasking != "low_confidence":
        problems.append("sampler.fast_threshold ranks by confidence: it needs sampler.remasking=low_confidence")
    if s.kv_refresh_every is not None and (not s.kv_cache or s.kv_refresh_every < 1):
        problems.append(f"sampler.kv_refresh_every must be a positive number of steps and needs sampler.kv_cache=true, "
                        f"got {s.kv_refresh_every} with kv_cache={s.kv_cache}")
    return problems


PROTOCOLS = ("papers", "experiment")                  # eval.protocol (protocol.py)
CHECKPOINT_RULES = ("final", "best_val", "best_test")   # eval.checkpoint (checkpoints.py)


def eval_problems(cfg: DictConfig) -> list[str]:
    """One sentence for each `eval` setting that no evaluation could accept, whatever the model;
    protocol.resolve_protocol adds the rules of each protocol and generation length."""
    from gdsd_lightning.tasks.release_eval import PROMPT_FAMILIES

    e, problems = cfg.eval, []
    if e.protocol not in PROTOCOLS:
        problems.append(f"eval.protocol must be one of {', '.join(PROTOCOLS)}, got {e.protocol!r}")
    if e.checkpoint not in CHECKPOINT_RULES:
        problems.append(f"eval.checkpoint must be one of {', '.join(CHECKPOINT_RULES)}, got {e.checkpoint!r}")
    if e.prompts not in PROMPT_FAMILIES:
        problems.append(f"eval.prompts must be one of {', '.join(PROMPT_FAMILIES)}, got {e.prompts!r}")
    if e.num_samples < 1:
        problems.append(f"eval.num_samples must be at least 1, got {e.num_samples}")
    elif e.num_samples > 1 and cfg.sampler.temperature <= 0:
        problems.append(f"eval.num_samples={e.num_samples} needs sampler.temperature > 0 (greedy samples are identical)")
    if e.lm_eval_tasks and e.protocol == "experiment":
        problems.append("eval.lm_eval_tasks needs eval.protocol=papers (the experiment protocol scores with the "
                        "task's own metrics)")
    return problems


ROLLOUT_SAMPLER_KEYS = ("fast_threshold", "kv_cache", "kv_refresh_every")   # what rollout.sampler may set


def rollout_sampler(cfg: DictConfig) -> DictConfig:
    """The sampler the rollouts draw with: `sampler` with `rollout.sampler` merged over it (only the
    fast-mode keys: what is sampled and scored stays the same shape as what is evaluated)."""
    other = [key for key in cfg.rollout.sampler if key not in ROLLOUT_SAMPLER_KEYS]
    if other:
        raise UserError(f"rollout.sampler.{other[0]}: only the fast-mode keys {', '.join(ROLLOUT_SAMPLER_KEYS)} may "
                        "differ between rollouts and evaluation")
    return OmegaConf.merge(cfg.sampler, cfg.rollout.sampler)


IMPORTANCE_CORRECTIONS = ("none", "tis", "mis")     # rollout.importance_correction (objectives/base.py)


def importance_problems(cfg: DictConfig, sampler: DictConfig) -> list[str]:
    """One sentence for each rollout.* mismatch setting that cannot run with this rollout sampler and method."""
    from gdsd_lightning.objectives import OBJECTIVES

    r, problems = cfg.rollout, []
    if r.mismatch_every < 0:
        problems.append(f"rollout.mismatch_every must be 0 (never) or a positive number of rollouts, got {r.mismatch_every}")
    if r.importance_correction not in IMPORTANCE_CORRECTIONS:
        problems.append(f"rollout.importance_correction must be one of {', '.join(IMPORTANCE_CORRECTIONS)}, "
                        f"got {r.importance_correction!r}")
    elif r.importance_correction != "none":
        refusal = getattr(OBJECTIVES[cfg.method.name], "importance_refusal", "it trains on no rollouts")
        if r.importance_cap <= 0:
            problems.append(f"rollout.importance_cap must be positive, got {r.importance_cap}")
        if not sampler.kv_cache:
            problems.append("rollout.importance_correction needs sampler.kv_cache=true (or rollout.sampler.kv_cache): without the cache every "
                            "forward is exact and every weight would be 1")
        if getattr(OBJECTIVES[cfg.method.name], "importance_level", None) is None:
            problems.append(f"rollout.importance_correction cannot be used with {cfg.method.name}: {refusal}")
    return problems


def check_combinations(cfg: DictConfig) -> None:
    """Refuse settings that cannot work together, in one sentence each."""
    problems = sampler_problems(cfg.sampler)
    s = rollout_sampler(cfg)
    if cfg.rollout.sampler:
        problems += [f"with rollout.sampler: {problem}" for problem in sampler_problems(s)]
    from gdsd_lightning.tasks import PROMPT_STYLES, RELEASES

    if cfg.task.prompt_style not in PROMPT_STYLES:
        problems.append(f"task.prompt_style must be 'plain' or 'chat', got {cfg.task.prompt_style!r}")
    if cfg.task.release not in RELEASES:
        problems.append(f"task.release must be one of {', '.join(RELEASES)}, got {cfg.task.release!r}")
    if cfg.task.max_prompt_length is not None and cfg.task.max_prompt_length < 1:
        problems.append(f"task.max_prompt_length must be a positive number of tokens or null, got {cfg.task.max_prompt_length}")
    from gdsd_lightning.objectives import OBJECTIVES

    if cfg.rollout.num_generations < 2 and getattr(OBJECTIVES[cfg.method.name], "uses_groups", False):
        problems.append("rollout.num_generations must be at least 2 (advantages are relative to the group)")
    if cfg.rollout.passk < 1:
        problems.append(f"rollout.passk must be at least 1, got {cfg.rollout.passk}")
    if cfg.rollout.decode not in ("first_eos", "all", "special"):
        problems.append(f"rollout.decode must be 'first_eos', 'all' or 'special', got {cfg.rollout.decode!r}")
    if cfg.rollout.passk_keep not in ("first_correct", "best_reward"):
        problems.append(f"rollout.passk_keep must be 'first_correct' or 'best_reward', got {cfg.rollout.passk_keep!r}")
    problems += importance_problems(cfg, s)
    if cfg.optim.scheduler not in ("constant", "cosine"):
        problems.append(f"optim.scheduler must be 'constant' or 'cosine', got {cfg.optim.scheduler!r}")
    from gdsd_lightning.objectives.scores import MASK_SEED_RULES

    if cfg.method.get("mask_seed_rule", "release") not in MASK_SEED_RULES:
        problems.append(f"method.mask_seed_rule must be {' or '.join(map(repr, MASK_SEED_RULES))}, "
                        f"got {cfg.method.mask_seed_rule!r}")
    if cfg.method.get("padding_rows", 0) < 0:
        problems.append(f"method.padding_rows must be 0 (the rank's whole rollout) or a positive number of rows, "
                        f"got {cfg.method.padding_rows}")
    mu = cfg.method.get("num_iterations", 1)
    if mu < 1:
        problems.append(f"method.num_iterations (mu) must be at least 1, got {mu}")
    for key in ("val_every_n_steps", "checkpoint_every_n_steps", "ref_sync_every_n_steps"):
        if mu >= 1 and cfg.trainer[key] % mu:
            problems.append(f"trainer.{key} ({cfg.trainer[key]}) must be a multiple of method.num_iterations ({mu}), "
                            "the optimiser steps per rollout")
    if cfg.trainer.checkpoint_every_n_steps % cfg.trainer.val_every_n_steps:
        problems.append(f"trainer.checkpoint_every_n_steps ({cfg.trainer.checkpoint_every_n_steps}) must be a multiple "
                        f"of trainer.val_every_n_steps ({cfg.trainer.val_every_n_steps}): checkpoints follow evaluations")
    if cfg.model.path is not None and cfg.model.init_from is not None:
        problems.append("set at most one of model.path and model.init_from")
    if cfg.trainer.strategy == "fsdp" and not str(cfg.trainer.devices).isdigit():
        problems.append(f"trainer.devices must be a number of devices with trainer.strategy=fsdp, got {cfg.trainer.devices!r}")
    if getattr(OBJECTIVES[cfg.method.name], "record_states", False):   # d-OPSD; docs/sampling.md, "Fast rollouts in RL"
        reasons = {"fast_threshold": "the threshold commits more than the L / steps positions it distils per "
                                     "recorded state and ends blocks early, so states and positions disagree",
                   "kv_cache": "the cache would record states drawn by an approximate model, off-policy for the "
                               "student it distils there"}
        problems += [f"sampler.{key} cannot be used with {cfg.method.name}: {reason}"
                     for key, reason in reasons.items() if s[key] not in (None, False)]
    unknown_loggers = [name for name in cfg.trainer.logger.split(",") if name not in LOGGERS]
    if unknown_loggers:
        problems.append(f"trainer.logger: unknown logger(s) {', '.join(map(repr, unknown_loggers))}; "
                        f"choose from {', '.join(LOGGERS)}, comma-separated")
    if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
        problems.append(f"model.dtype must be float32, bfloat16 or float16, got {cfg.model.dtype!r}")
    if cfg.model.lora_r < 0:
        problems.append(f"model.lora_r must be 0 (off) or positive, got {cfg.model.lora_r}")
    problems += eval_problems(cfg)      # checked before training too, not only when the run is evaluated
    if problems:
        raise UserError("; ".join(problems))


def save_config(cfg: DictConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
