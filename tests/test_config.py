import pytest
from omegaconf import OmegaConf

from gdsd_lightning.config import list_experiments
from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.errors import UserError


def test_every_shipped_experiment_loads():
    names = list_experiments()
    assert {"tiny_sudoku_sft", "tiny_countdown_sft", "gdsd_tiny_sudoku", "gdsd_tiny_countdown"} <= set(names)
    for name in names:
        cfg = load_experiment(name)
        assert cfg.name == name


def test_overrides_and_base_files_compose():
    cfg = load_experiment("gdsd_tiny_sudoku", ["trainer.max_steps=12", "method.psi=10"])
    assert cfg.trainer.max_steps == 12 and cfg.method.psi == 10.0
    assert cfg.model.family == "tiny-llada" and cfg.task.name == "sudoku"   # from _base files
    assert OmegaConf.is_readonly(cfg)


def test_unknown_key_names_the_key_and_lists_valid_ones():
    with pytest.raises(UserError) as err:
        load_experiment("tiny_sudoku_sft", ["trainer.max_stepz=5"])
    message = str(err.value)
    assert "trainer.max_stepz" in message and "max_steps" in message and "val_every_n_steps" in message


def test_unknown_method_key_is_checked_against_the_objective():
    with pytest.raises(UserError, match=r"method.psy.*valid keys here: .*psi"):
        load_experiment("gdsd_tiny_sudoku", ["method.psy=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(UserError, match=r"trainer.max_steps"):
        load_experiment("tiny_sudoku_sft", ["trainer.max_steps=lots"])


@pytest.mark.parametrize("override, phrase", [
    ("sampler.block_length=5", "must divide sampler.gen_length"),
    ("sampler.steps=3", "multiple of the number of blocks"),
    ("method.num_iterations=0", "at least 1"),
    ("trainer.val_every_n_steps=6 method.num_iterations=4", "multiple of method.num_iterations"),
    ("rollout.num_generations=1", "at least 2"),
    ("sampler.fast_threshold=0.9 sampler.remasking=random", "needs sampler.remasking=low_confidence"),
    ("sampler.remasking=confidence", "sampler.remasking must be 'low_confidence' or 'random'"),
    ("sampler.kv_cache=true sampler.kind=dream", "fast mode exists for the block sampler only"),
    ("sampler.kv_refresh_every=2", "needs sampler.kv_cache=true"),
    ("sampler.kv_cache=true sampler.kv_refresh_every=0", "kv_refresh_every must be a positive number"),
    ("eval.checkpoint=best", "eval.checkpoint must be one of"),                   # eval keys, before training
    ("eval.num_samples=0", "eval.num_samples must be at least 1"),
])
def test_impossible_combinations_are_refused(override, phrase):
    with pytest.raises(UserError, match=phrase):
        load_experiment("gdsd_tiny_countdown", override.split())


def test_unknown_experiment_lists_known_ones():
    with pytest.raises(UserError, match=r"unknown experiment 'nope'.*tiny_sudoku_sft"):
        load_experiment("nope")


def test_fast_mode_is_refused_for_objectives_that_train_on_the_exact_states():
    with pytest.raises(UserError, match="fast_threshold cannot be used with dopsd"):
        load_experiment("dopsd_tiny_sudoku", ["sampler.fast_threshold=0.9"])
    with pytest.raises(UserError, match="kv_cache cannot be used with dopsd"):
        load_experiment("dopsd_tiny_sudoku", ["sampler.kv_cache=true"])


def test_command_line_extends_merges_a_file_before_the_overrides():
    cfg = load_experiment("gdsd_llada_math", ["extends=_base/cpu_smoke.yaml", "trainer.max_steps=48"])
    assert cfg.trainer.accelerator == "cpu" and cfg.model.lora_r == 4      # from the overlay
    assert cfg.method.psi == 10.0 and cfg.task.name == "math"              # the recipe's own
    assert cfg.trainer.max_steps == 48                                     # key=value wins
    with pytest.raises(UserError, match="extends=nope.yaml: no such file"):
        load_experiment("gdsd_llada_math", ["extends=nope.yaml"])


def test_compare_gives_every_method_the_shared_schedule_and_keeps_each_methods_own_settings():
    from gdsd_lightning.commands.compare import SHARED_SCHEDULE

    demo = load_experiment("gdsd_tiny_sudoku")                     # `make train`'s default
    assert demo.method.beta == 0.05 and demo.optim.scheduler == "cosine"
    compared = {m: load_experiment(f"{m}_tiny_sudoku", [SHARED_SCHEDULE, "extends=_base/cpu_smoke.yaml"])
                for m in ("gdsd", "diffu_grpo", "spg", "dopsd")}
    schedules = {m: (c.optim, c.trainer.max_steps) for m, c in compared.items()}
    assert schedules["gdsd"] == schedules["diffu_grpo"] == schedules["spg"] == schedules["dopsd"]
    assert compared["gdsd"].optim.lr == 1e-4 and compared["gdsd"].trainer.max_steps == 24  # later overlay wins
    assert compared["gdsd"].method.beta == demo.method.beta                 # the method's own settings stay
    dopsd = compared["dopsd"].rollout                                       # and so does its rollout recipe
    assert (dopsd.num_generations, dopsd.temperature, dopsd.passk) == (1, 0.9, 8)


def test_chat_prompts_need_a_tokenizer_with_a_chat_template():
    from types import SimpleNamespace

    from gdsd_lightning.generation import prompt_texts
    from gdsd_lightning.tasks import get_task

    with pytest.raises(UserError, match="has no chat template"):
        prompt_texts(get_task("gsm8k"), [{"question": "1+1?", "answer": "#### 2"}], SimpleNamespace(chat_template=None))


def test_configuration_doc_names_every_key():
    """docs/configuration.md is the reference of every key: a key added to a config dataclass
    (sections or objectives) without a row there fails here."""
    from dataclasses import MISSING, fields, is_dataclass

    from gdsd_lightning.config import PROJECT_ROOT
    from gdsd_lightning.experiment import ExperimentConfig
    from gdsd_lightning.objectives import OBJECTIVES

    doc = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    factories = [f.default_factory for f in fields(ExperimentConfig) if f.default_factory is not MISSING]
    sections = [ExperimentConfig] + [factory() for factory in factories if is_dataclass(factory())]
    keys = {f.name for section in sections for f in fields(section)}
    keys |= {f.name for objective in OBJECTIVES.values() for f in fields(objective.Config)}
    missing = sorted(key for key in keys if f"`{key}`" not in doc)
    assert not missing, f"docs/configuration.md does not name these config keys: {missing}"


@pytest.mark.parametrize("task", ["sudoku", "countdown"])
def test_the_tiny_tasks_decode_in_blocks_so_dopsd_has_a_future_and_spg_real_blocks(task):
    """As the published runs decode 8 blocks: at least 4 blocks, 2 tokens per step, in every tiny
    experiment of the task; d-OPSD trains on the blocks before the last, SPG masks the sampler's blocks."""
    names = [n for n in list_experiments() if n.endswith(f"_tiny_{task}") or n == f"tiny_{task}_sft"]
    assert len(names) >= 9
    for name in names:
        s = load_experiment(name).sampler
        assert (s.gen_length // s.block_length >= 4, s.gen_length // s.steps) == (True, 2), name
    assert not load_experiment(f"dopsd_tiny_{task}").method.record_last_block
    assert load_experiment(f"spg_tiny_{task}").method.block_length == load_experiment(f"spg_tiny_{task}").sampler.block_length
