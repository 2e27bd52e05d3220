"""How the training rollouts are sampled and read, against the releases' training steps."""

import pytest

from gdsd_lightning.experiment import load_experiment


def rollout_module(*overrides):
    from gdsd_lightning.models.build import build_policy
    from gdsd_lightning.module import DiffusionRLModule
    from gdsd_lightning.tasks import get_task

    cfg = load_experiment("gdsd_tiny_countdown", ["model.init_from=null", "rollout.num_generations=2", *overrides])
    return DiffusionRLModule(cfg, build_policy(cfg), get_task("countdown"))


@pytest.mark.parametrize("dropout", [False, True])
def test_rollouts_sample_in_train_mode_with_rollout_dropout_as_the_releases(monkeypatch, tmp_path, tiny_llada, dropout):
    """The releases generate inside training_step after model.train() (GDSD gdsd_trainer_batchll.py:549),
    so LoRA dropout is active while sampling: `rollout.dropout=true` samples in train mode."""
    import gdsd_lightning.module as module_code

    tiny_llada.save(tmp_path / "base")
    module = rollout_module(f"model.path={tmp_path / 'base'}", "model.lora_r=2", "model.lora_dropout=0.5",
                            f"rollout.dropout={str(dropout).lower()}")
    modes, sample = [], module_code.sample
    monkeypatch.setattr(module_code, "sample", lambda policy, *a, **k: modes.append(policy.training) or sample(policy, *a, **k))
    module.rollout([{"input": "6,5,78", "output": "79"}])
    assert modes == [dropout] and module.policy.training


def test_the_published_recipes_sample_with_dropout_and_the_tiny_experiments_without():
    assert load_experiment("diffu_grpo_llada_gsm8k").rollout.dropout and load_experiment("gdsd_dream_sudoku").rollout.dropout
    assert not load_experiment("gdsd_tiny_sudoku").rollout.dropout


def test_rollout_decode_reads_past_an_early_eos_as_the_releases(tiny_llada):
    """The releases decode all L tokens with skip_special_tokens=True (GDSD gdsd_trainer_batchll.py:683,
    d1 diffu_grpo_trainer.py:480): "12<eos>34<eos>" reads "1234"; d-OPSD's gate keeps the special
    tokens (d_opsd_trainer.py:441); `first_eos` (the tiny experiments) cuts at the EOS."""
    import torch

    eos, (one, two), (three, four) = tiny_llada.eos_id, *(tiny_llada.tokenizer(t)["input_ids"] for t in ("12", "34"))
    ids = torch.tensor([[one, two, eos, three, four, eos]])
    assert [tiny_llada.decode(ids, mode)[0] for mode in ("first_eos", "all", "special")] == ["12", "1234", "12<eos>34<eos>"]
    recipes = {name: load_experiment(name).rollout.decode for name in ("gdsd_llada_gsm8k", "wd1_dream_sudoku",
                                                                        "dopsd_llada_sudoku", "gdsd_tiny_sudoku")}
    assert recipes == {"gdsd_llada_gsm8k": "all", "wd1_dream_sudoku": "all", "dopsd_llada_sudoku": "special",
                       "gdsd_tiny_sudoku": "first_eos"}


def test_an_unknown_rollout_decode_is_refused_in_one_sentence():
    from gdsd_lightning.errors import UserError

    with pytest.raises(UserError, match="rollout.decode must be"):
        load_experiment("gdsd_tiny_sudoku", ["rollout.decode=raw"])


def test_sampling_in_train_mode_keeps_the_kv_cache_under_gradient_checkpointing(tiny_llada):
    """transformers drops the cache of a checkpointed layer in train mode; `sampling` turns the
    layers' checkpointing off while sampling (no gradient flows there) and restores mode and flags."""
    import torch

    from gdsd_lightning.diffusion.sampler import block_sample

    ids, mask = tiny_llada.encode_prompts(["12\n", "3456\n"])
    exact = block_sample(tiny_llada.eval(), ids, mask, 8, 4, 4, kv_cache="prefix").completions
    tiny_llada.transformer.gradient_checkpointing_enable()
    tiny_llada.train()
    with tiny_llada.sampling(dropout=True):
        assert tiny_llada.training
        sampled = block_sample(tiny_llada, ids, mask, 8, 4, 4, kv_cache="prefix").completions
    assert torch.equal(sampled, exact) and tiny_llada.training and tiny_llada.transformer.is_gradient_checkpointing


def test_dopsd_sudoku_gate_reads_an_answer_that_an_end_token_closes_as_the_release(tiny_llada):
    """d-OPSD decodes with skip_special_tokens=False (d_opsd_trainer.py:441, 495) and its sudoku
    patterns close an answer on LLaDA's end tokens (d-opsd/utils.py:353-359): "<answer>\\n31422431<|eot_id|>"
    reads 3142243100000000, which fills the 4 empty cells among the first 8 and none of the other 4:
    0.5. With the special tokens dropped no pattern matches: 0."""
    import torch

    from gdsd_lightning.tasks import get_task

    cfg = load_experiment("dopsd_llada_sudoku")
    assert (cfg.rollout.decode, cfg.task.release) == ("special", "dopsd")
    tokenizer = tiny_llada.tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|eot_id|>", "<|endoftext|>"]})
    eot, end = tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|endoftext|>"])
    ids = torch.tensor([tokenizer("<answer>\n31422431", add_special_tokens=False)["input_ids"] + [eot, end, end]])
    solution, empty = "3142243142131324", {0, 2, 5, 7, 9, 11, 12, 14}
    example = {"Solution": solution, "Puzzle": "".join("0" if i in empty else d for i, d in enumerate(solution))}
    task = get_task("sudoku", "chat", "dopsd")
    rewards = {mode: task.reward(tiny_llada.decode(ids, mode)[0], example) for mode in ("special", "all")}
    assert rewards == {"special": 0.5, "all": 0.0}
