"""The bench's FLOP accounting (its MFU figures) against torch's own count, its MFU section on the
CPU, and (slow) `bench --quick` end to end."""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from gdsd_lightning.commands.bench import SAMPLER_MODES, bench_scale, forward_flops, sampler_flops, stand_in
from gdsd_lightning.diffusion.sampler import block_sample
from gdsd_lightning.objectives import RL_METHODS


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_forward_flops_equal_torchs_count_for_a_model_with_grouped_query_attention():
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        assert counted_flops(lambda: model(ids)) == forward_flops(config, rows=3, length=7, head_positions=7)


def test_sampler_flops_equal_torchs_count_of_the_exact_sampler():
    model = stand_in(32, 2, 200, "cpu")
    model.transformer.set_attn_implementation("eager")   # torch counts no fused CPU attention kernel
    ids, mask = torch.randint(10, 90, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    counted = counted_flops(lambda: block_sample(model, ids, mask, gen_length=8, block_length=4, steps=6))
    assert counted == sampler_flops(model.transformer.config, batch=2, prompt=5, gen=8, block=4, steps=6)


def test_mfu_section_reports_time_rates_and_mfu_against_the_peak():
    shape = dict(hidden=32, layers=2, heads=4, intermediate=64, vocab=300)
    loss, sampler = dict(rows=2, prompt=6, gen=8), dict(batch=2, prompt=6, gen=8, block=4, steps=4)
    result = bench_scale("cpu", 0.5, shape, loss, sampler, torch.float32, repeats=1)
    assert result["parameters"] == sum(p.numel() for p in stand_in(32, 2, 300, "cpu", heads=4, intermediate=64).parameters())
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
    flops = {"loss_pass": 3 * forward_flops(config, rows=2, length=14, head_positions=8),
             "sampler": sampler_flops(config, batch=2, prompt=6, gen=8, block=4, steps=4)}
    for part, part_flops in flops.items():
        r = result[part]
        assert r["tflops_per_s"] == pytest.approx(part_flops / r["seconds"] / 1e12, rel=2e-3)
        assert r["mfu"] == pytest.approx(r["tflops_per_s"] / 0.5, rel=2e-3)
    assert result["sampler"]["tokens_per_s"] == pytest.approx(16 / result["sampler"]["seconds"], rel=2e-3)


def test_bench_modes_refuses_an_unknown_mode_in_one_sentence(tmp_path):
    from gdsd_lightning.commands.bench import bench
    from gdsd_lightning.errors import UserError

    with pytest.raises(UserError, match=r"^--modes: unknown sampler mode\(s\) 'prefix'; known: exact, "):
        bench(out=str(tmp_path), modes=["exact", "prefix"])
    assert not any(tmp_path.iterdir())


def test_the_trained_bases_table_has_a_row_per_mode_asked_for():
    from gdsd_lightning.commands.bench import trained_bases_table

    result = {"naive": {"accuracy": 0.5, "seconds": 2.0, "backbone_share": 0.8},
              "exact": {"accuracy": 0.5, "seconds": 1.0, "speedup_over_naive": 2.0, "accuracy_delta_points": 0.0,
                        "backbone_share": 0.6, "layer_tokens_saving": 1.0},
              "kv_cache_prefix": {"accuracy": 0.25, "seconds": 0.5, "speedup_over_naive": 4.0,
                                  "accuracy_delta_points": -25.0, "backbone_share": 0.25, "layer_tokens_saving": 1.5}}
    assert trained_bases_table({"sudoku": result, "countdown": None}, ["exact", "kv_cache_prefix"])[2:] == [
        "| mode | sudoku | countdown |", "|---|---|---|", "| naive | 0.5 in 2.0 s, layers 80% | n/a |",
        "| exact | 0.5 in 1.0 s: 2.0x, +0.0 pts, layers 60%, 1.0x fewer layer tokens | n/a |",
        "| kv_cache_prefix | 0.25 in 0.5 s: 4.0x, -25.0 pts, layers 25%, 1.5x fewer layer tokens | n/a |"]


def test_layer_work_counts_the_layer_calls_only_and_restores_the_model(tiny_llada):
    import time

    from gdsd_lightning.commands.bench import layer_work

    ids = torch.randint(3, 20, (4, 24))
    assert layer_work(tiny_llada, lambda: time.sleep(0.05)) == {"backbone_share": 0.0, "layer_tokens": 0}
    forward_only = layer_work(tiny_llada, lambda: tiny_llada(ids))
    half_asleep = layer_work(tiny_llada, lambda: (tiny_llada(ids), tiny_llada(ids[:, :6]), time.sleep(0.2)))
    assert 0.5 < forward_only["backbone_share"] <= 1.0
    assert 0.0 < half_asleep["backbone_share"] < forward_only["backbone_share"]
    assert (forward_only["layer_tokens"], half_asleep["layer_tokens"]) == (4 * 24, 4 * 24 + 4 * 6)
    assert "forward" not in vars(tiny_llada.transformer.base_model)     # the class's forward again


@pytest.mark.slow
def test_bench_quick_writes_its_summary_and_table(tmp_path):
    """The command as users run it; the trained bases' section only where `make train` has made them."""
    out = tmp_path / "bench"
    subprocess.run([sys.executable, "-m", "gdsd_lightning", "bench", "--quick", "--out", str(out)], cwd=tmp_path,
                   check=True, timeout=600)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs_identical"] and all(case["outputs_identical"] for case in summary["sampler"].values())
    assert set(summary["loss_step"]) == set(RL_METHODS)
    assert all(r["loss_step_ms"] > 0 and r["peak_mib"] > 0 for r in summary["loss_step"].values())
    assert summary["loss_peak_mem_ratio"] <= 0.5
    for modes in filter(None, summary["trained_bases"].values()):
        assert modes["exact"]["accuracy"] == modes["naive"]["accuracy"] and set(modes) == {"naive", *SAMPLER_MODES}
    assert summary["scale"] is None
    table = (out / "bench.md").read_text()
    assert f"{summary['sampler']['large_vocab']['speedup']}x" in table
    assert f"(ratio {summary['loss_peak_mem_ratio']})" in table
