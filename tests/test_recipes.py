"""The real-model recipes carry the values of the release configs they name (read off by hand:
GaryBall/GDSD scripts/, dllm-reasoning/d1 diffu-grpo/slurm_scripts/, xiaohangt/wd1 run/,
facebookresearch/SPG spg/slurm_scripts/, xingzhejun/d-opsd-code d-opsd/run/)."""

import pytest

from gdsd_lightning.experiment import load_experiment


def completions_per_step(cfg) -> int:
    """Completions behind one optimiser step over all ranks (the release's effective batch)."""
    return cfg.trainer.devices * cfg.rollout.prompts_per_step * cfg.rollout.num_generations


@pytest.mark.parametrize("name, method, values", [
    # GDSD GSM8K: 8 GPUs x 10 x 4 = 320 completions of G 16, mu 8, K 2, psi 10, beta 1e-3, lr 3e-6,
    # weight decay 0.01, 256 steps at T 1.0; the stratified k per per-device batch of 10
    ("gdsd_llada_gsm8k", "gdsd", dict(G=16, rows=320, micro=10, mu=8, lr=3e-6, wd=0.01, steps=256, T=1.0,
                                      psi=10.0, beta=1e-3, eps=4e-4, num_mc=2)),
    # GDSD MATH: 8 x 8 x 4 = 256 of G 16, lr 1e-5, beta 1e-4, L 256
    ("gdsd_llada_math", "gdsd", dict(G=16, rows=256, micro=8, mu=8, lr=1e-5, wd=0.01, steps=256, T=1.0,
                                     psi=10.0, beta=1e-4, num_mc=2, L=256)),
    # ESPO MATH: the GDSD script's beta 1e-4, and train_gdsd.yaml's epsilon 4e-4 as the clip
    ("espo_llada_math", "espo", dict(G=16, rows=256, micro=8, mu=8, lr=1e-5, beta=1e-4, eps=4e-4, num_mc=2, L=256)),
    # the demos (train_gdsd.yaml on 1 GPU): 1 x 12 = 2 prompts x 6, beta 1e-3, psi 1, 64 steps, T 1.0
    ("gdsd_llada_sudoku", "gdsd", dict(G=6, rows=12, micro=1, mu=8, lr=3e-6, wd=0.01, steps=64, T=1.0,
                                       psi=1.0, beta=1e-3, eps=4e-4, num_mc=1)),
    ("gdsd_tlc_dream_countdown", "gdsd_tlc", dict(G=6, rows=12, micro=1, mu=8, steps=64, T=1.0, psi=1.0, beta=1e-3)),
    ("gdsd_tlc_llada_sudoku", "gdsd_tlc", dict(G=6, rows=12, micro=1, mu=8, steps=64, T=1.0, beta=1e-3)),
    ("espo_dream_sudoku", "espo", dict(G=6, rows=12, micro=1, mu=8, steps=64, T=1.0, beta=1e-3, eps=4e-4, num_mc=1)),
    # SPG GSM8K: mu 4, 256 steps (the GDSD script), T 0.9 (TRL's default), SPG's 6 x 2 per GPU on 8
    ("spg_llada_gsm8k", "spg", dict(G=6, rows=96, micro=6, mu=4, lr=3e-6, wd=0.1, steps=256, T=0.9, beta_eubo=1.5)),
    # SPG sudoku (SPG's release): per-device 3, beta_e 1.0, T 0.3
    ("spg_llada_sudoku", "spg", dict(G=6, rows=96, micro=3, mu=4, steps=128, T=0.3, beta_eubo=1.0)),
    # d1: 8 GPUs x 6 x 2, mu 12 on GSM8K / 8 on sudoku, T 0.9
    ("diffu_grpo_llada_gsm8k", "diffu_grpo", dict(G=6, rows=96, micro=6, mu=12, lr=3e-6, wd=0.1, steps=128, T=0.9,
                                                  beta=0.04, eps=0.5)),
    ("diffu_grpo_dream_sudoku", "diffu_grpo", dict(G=6, rows=96, micro=6, mu=8, T=0.9, beta=0.04, eps=0.5)),
    # d1 MATH: train.yaml:60,63 (256 tokens, 128 steps), which math_base.sbatch does not override
    ("diffu_grpo_llada_math", "diffu_grpo", dict(G=6, rows=96, mu=12, L=256, steps=128)),
    # wd1: 4 GPUs x 6 x 2, mu 12 on GSM8K and countdown, 8 on sudoku
    ("wd1_llada_gsm8k", "wd1", dict(G=6, rows=48, micro=6, mu=12, lr=3e-6, wd=0.1)),
    ("wd1_dream_countdown", "wd1", dict(G=6, rows=48, mu=12)),
    ("wd1_dream_sudoku", "wd1", dict(G=6, rows=48, mu=8)),
    # DMPO (run_dmpo.sh over dmpo_train_config.yaml): 8 GPUs x 4 x 2 = 64 of G 16, mu 8, T 0.2, lr 1e-6
    ("dmpo_llada_gsm8k", "dmpo", dict(G=16, rows=64, micro=4, mu=8, lr=1e-6, wd=0.1, steps=128, T=0.2, L=256,
                                      alpha=0.04, coeff=1.0, num_replicates=4)),
    ("dmpo_llada_math", "dmpo", dict(G=16, rows=64, micro=4, mu=8, steps=128, T=0.2, L=256)),
    # d-OPSD: one prompt and one rollout per GPU on 4, batch_divide 4, lr 5e-6, passk 8
    ("dopsd_llada_gsm8k", "dopsd", dict(G=1, rows=4, mu=4, lr=5e-6, wd=0.1, steps=128, T=0.9)),
    # d-OPSD MATH: opsd.yaml:75,78 (256 tokens, 128 steps), which run/math/opsd.sh does not override
    ("dopsd_llada_math", "dopsd", dict(G=1, rows=4, mu=4, L=256, steps=128)),
])
def test_recipe_values_are_the_release_configs(name, method, values):
    cfg = load_experiment(name)
    m = cfg.method
    actual = dict(G=cfg.rollout.num_generations, rows=completions_per_step(cfg), micro=m.micro_batch_size,
                  mu=m.num_iterations, lr=cfg.optim.lr, wd=cfg.optim.weight_decay, steps=cfg.sampler.steps,
                  T=cfg.rollout.temperature, L=cfg.sampler.gen_length, **{k: m[k] for k in m if k in values})
    assert m.name == method
    assert {k: actual[k] for k in values} == pytest.approx(values)


def test_dopsd_recipes_keep_the_release_passk_and_gate_rules():
    sudoku, gsm8k = load_experiment("dopsd_llada_sudoku"), load_experiment("dopsd_llada_gsm8k")
    assert (sudoku.rollout.passk, sudoku.rollout.passk_keep, sudoku.method.gate_min_reward) == (8, "best_reward", 0.25)
    assert (gsm8k.rollout.passk, gsm8k.rollout.passk_keep, gsm8k.method.gate_min_reward) == (8, "first_correct", None)
    assert load_experiment("dopsd_llada_math").method.clamp == 0.04 and not gsm8k.method.skip_gated


def test_compare_recipe_mu_runs_dopsd_at_the_release_batch_divide():
    """`compare --mu recipe` takes each method's Config default; d-OPSD's is BATCH_DIVIDE=4 of every
    release script (d-opsd/run/{sudoku,countdown,gsm,math}/opsd.sh), not the Config class's 1."""
    from gdsd_lightning.commands.compare import recipe_mu_overrides

    assert recipe_mu_overrides("dopsd_tiny_sudoku", [])[0] == "method.num_iterations=4"


def test_dmpo_recipes_sample_with_the_prefix_cache_and_take_the_release_loss_scale():
    """run_dmpo.sh: --use_fast_sampler fast_dllm --sampler pd_cache_prefix; dmpo_trainer.py:182's sum
    per device batch; the adapters-off base as the reference (dmpo_trainer.py:252); clip 0.2 (:23)."""
    for task in ("gsm8k", "math", "sudoku", "countdown"):
        cfg = load_experiment(f"dmpo_llada_{task}")
        assert (cfg.sampler.kv_cache, cfg.method.loss_scale, cfg.trainer.ref_sync_every_n_steps, cfg.optim.grad_clip,
                cfg.model.quantization, cfg.model.lora_r, cfg.model.lora_alpha) == ("prefix", "device_batch", 0, 0.2,
                                                                                    "nf4", 128, 64)
