"""`python -m gdsd_lightning bench [--quick] [--device cpu|cuda] [--out results/bench] [--peak-tflops F] [--modes M,...]`.

    sampler    our exact block sampler against a naive reference loop with the published LLaDA
               structure (full-sequence logits at every step, a full-vocabulary softmax over every
               position, a per-row top-k loop), on the same model, prompts and schedule, greedy;
               tokens/s, the speed-up and whether the outputs are identical token for token. Run
               on the tiny experiment model, on a large-vocabulary stand-in (V = 128k, LLaDA's
               126k) where the LM head and the softmax dominate, and on a deeper, wider stand-in
               with a small vocabulary where the transformer layers dominate, as they do at 8B.
    loss pass  forward + backward time and peak memory of every objective at equal batch on the
               tiny model, and peak memory of our completion log-probs against the straightforward full-vocabulary
               computation at V = 128k (`loss_peak_mem_ratio`).
    fast mode  threshold decoding (also commit every proposal above FAST_THRESHOLD) and the KV cache
               (within a block, run only the block against cached keys/values of the rest): speed
               against the naive loop on the cases above, and on the trained tiny sudoku / countdown
               bases (skipped when not trained) the naive loop, the exact schedule and each fast
               variant on the same test prompts: time, greedy accuracy, the share of the time
               spent in the transformer layers (`backbone_share`: 1 / (1 - share) bounds what any
               cache of layer calls can gain) and the tokens the layers ran (`layer_tokens`; the
               exact schedule's over a mode's, `layer_tokens_saving`, is what its cache and
               threshold save in layer work).
    MFU        (CUDA only) a ~1B-parameter stand-in of LLaDA's shape in bf16: the loss pass (completion
               log-probs, forward + backward) and the exact sampler at batch 64, generation 256,
               block 32: time, tokens/s and model FLOPs utilisation = model FLOPs / time / the GPU's
               dense bf16 peak (PEAK_TFLOPS by device name, or --peak-tflops). Model FLOPs are
               counted analytically (`forward_flops`), so recomputation does not count.

Writes <out>/summary.json and <out>/bench.md. `--modes exact,kv_cache_prefix` (names of SAMPLER_MODES)
runs only the trained-bases comparison, for the naive loop, the exact schedule and those modes, and
writes <out>/trained_bases.json and <out>/trained_bases.md instead. Peak memory on CPU is the growth of the process's
resident-set high-water mark, measured in a fresh process per measurement; on CUDA it is
torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from gdsd_lightning.diffusion.estimators import completion_logprobs, with_prompt
from gdsd_lightning.diffusion.masking import generator_for
from gdsd_lightning.diffusion.sampler import block_sample, split_evenly, start_sequence
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.models.families import FAMILIES, build_tiny_model
from gdsd_lightning.models.tokenizer import build_char_tokenizer
from gdsd_lightning.runs import write_json

LARGE_VOCAB = 128_000
# model width, layers, vocabulary (None: the tokenizer's), batch, prompt length, generation length, block, steps;
# the tiny cases are the tiny tasks' shapes (4 blocks of 4, 2 tokens per step);
# large_vocab and backbone_bound follow LLaDA's evaluation shape (blocks of 32, 2 tokens per step) at a
# smaller length; at 8B the head is about 6% of a forward's FLOPs, in backbone_bound about 11%
SAMPLER_CASES = {
    "tiny_sudoku": dict(hidden=64, layers=4, vocab=None, batch=64, prompt=17, gen=16, block=4, steps=8),
    "tiny_countdown": dict(hidden=64, layers=4, vocab=None, batch=64, prompt=13, gen=16, block=4, steps=8),
    "large_vocab": dict(hidden=64, layers=2, vocab=LARGE_VOCAB, batch=8, prompt=64, gen=128, block=32, steps=64),
    "backbone_bound": dict(hidden=128, layers=8, vocab=2048, batch=4, prompt=64, gen=128, block=32, steps=64),
}
QUICK = {"tiny_sudoku": dict(batch=32), "tiny_countdown": dict(batch=32), "large_vocab": dict(batch=4, prompt=32, gen=64, steps=32),
         "backbone_bound": dict(batch=2, prompt=32, gen=64, steps=32)}
FAST_THRESHOLD = 0.9                       # fast mode: commit every proposal above this confidence
# block_sample options (greedy) of the exact schedule and of fast mode's parts
SAMPLER_MODES = {"exact": {}, "threshold_0.9": dict(threshold=FAST_THRESHOLD), "threshold_0.7": dict(threshold=0.7),
                 "threshold_0.5": dict(threshold=0.5), "kv_cache": dict(kv_cache=True),
                 "kv_cache_refresh_2": dict(kv_cache=True, kv_refresh_every=2), "kv_cache_prefix": dict(kv_cache="prefix"),
                 "fast": dict(threshold=FAST_THRESHOLD, kv_cache=True)}
# the MFU section: a ~1B stand-in (LLaDA-8B's vocabulary, 1.08B parameters besides the input embedding),
# its loss pass and the sampler setting (eval protocol: steps = gen / 2)
SCALE_MODEL = dict(hidden=2048, layers=16, heads=16, intermediate=5632, vocab=126_464)
SCALE_LOSS = dict(rows=8, prompt=256, gen=256)
SCALE_SAMPLER = dict(batch=64, prompt=128, gen=256, block=32, steps=128)
QUICK_SCALE = dict(loss=dict(rows=2), sampler=dict(batch=16, gen=64, steps=32))
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0}   # dense bf16; first name in the device's
LOSS_BATCH = dict(rows=64, prompt=17, gen=16)
MEMORY_CASE = dict(hidden=64, layers=2, vocab=LARGE_VOCAB, rows=8, prompt=64, gen=64)


def stand_in(hidden: int, layers: int, vocab: int | None, device: str, seed: int = 0, heads: int = 4,
             intermediate: int | None = None) -> DiffusionLM:
    """A tiny-llada network (random weights) with the character tokenizer; `vocab` enlarges the
    embedding and LM head beyond the tokenizer (ids above it are simply never fed in)."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(FAMILIES["tiny-llada"], vocab or len(tokenizer), hidden, layers, heads,
                             intermediate or 4 * hidden, 512, tokenizer.pad_token_id, seed)
    return DiffusionLM(model, tokenizer, FAMILIES["tiny-llada"]).to(device).eval()


def random_prompts(rows: int, length: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(10, 90, (rows, length), generator=generator_for(1)).to(device)
    return ids, torch.ones_like(ids)


@torch.no_grad()
def naive_block_sample(model: DiffusionLM, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, gen_length: int,
                       block_length: int, steps: int) -> torch.Tensor:
    """Greedy LLaDA sampling written as the published reference: the whole sequence's logits at
    every step, a float softmax over the full vocabulary at every position, and the commit by a
    Python loop over rows. Same proposal rule as ours (the mask token is never proposed) and the
    same tie rule (equal confidences: the earlier position first; a confident tiny model gives
    many probabilities of exactly 1.0)."""
    prompt_len = prompt_ids.shape[1]
    x, attention = start_sequence(model, prompt_ids, prompt_mask, gen_length)
    steps_per_block = steps // (gen_length // block_length)
    for block in range(gen_length // block_length):
        end = prompt_len + (block + 1) * block_length
        schedule = split_evenly((x[:, end - block_length:end] == model.mask_id).sum(1), steps_per_block)
        for step in range(steps_per_block):
            mask_index = x == model.mask_id
            logits = model(x, attention).float()
            logits[..., model.mask_id] = -torch.inf
            x0 = logits.argmax(-1)
            p = torch.softmax(logits, dim=-1)
            x0_p = p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, end:] = -torch.inf
            confidence = torch.where(mask_index, x0_p, torch.full_like(x0_p, -torch.inf))
            transfer = torch.zeros_like(mask_index)
            for row in range(x.shape[0]):   # torch.topk leaves the order of equal values open: ties by position
                chosen = torch.argsort(confidence[row], descending=True, stable=True)[: int(schedule[row, step])]
                transfer[row, chosen] = True
            x = torch.where(transfer, x0, x)
    return x[:, prompt_len:]


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


@contextmanager
def backbone_clock(model: DiffusionLM):
    """Seconds spent in the transformer layers of `model` (its backbone's forward, every call,
    cached or not) and the tokens they ran, accumulated while inside in the yielded dict."""
    backbone = model.transformer.base_model
    spent, original = {"seconds": 0.0, "tokens": 0}, backbone.forward

    def clocked(*args, **kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent["seconds"] += time.perf_counter() - start
            spent["tokens"] += ids.numel()

    backbone.forward = clocked
    try:
        yield spent
    finally:
        del backbone.forward          # the class's forward again


def layer_work(model: DiffusionLM, run: Callable[[], object]) -> dict:
    """One call of `run`: the share of its time spent in the transformer layers of `model`
    (1 / (1 - share) bounds the speed-up of skipping every layer call) and the tokens the layers
    ran (a cache's saving: the exact schedule's tokens / these)."""
    with backbone_clock(model) as spent:
        start = time.perf_counter()
        run()
        total = time.perf_counter() - start
    return {"backbone_share": round(spent["seconds"] / total, 3), "layer_tokens": spent["tokens"]}


def bench_sandbox(repeats: int) -> dict:
    """Median wall time (ms) of judging a one-line program: one test (the judge, one sandbox) and
    ten tests (ten sandboxes); per sandbox: the difference over the nine extra."""
    from gdsd_lightning.tasks.sandbox import isolation, run_tests

    program, test = "def f():\n    return 1\n", "assert f() == 1"
    one, _ = timed(lambda: run_tests(program, [test]), repeats)
    ten, _ = timed(lambda: run_tests(program, [test] * 10), repeats)
    return {"isolation": isolation().describe(), "one_test_ms": round(1000 * one, 1),
            "per_sandbox_ms": round(1000 * (ten - one) / 9, 1)}


def bench_sampler(case: dict, device: str, repeats: int) -> dict:
    model = stand_in(case["hidden"], case["layers"], case["vocab"], device)
    ids, mask = random_prompts(case["batch"], case["prompt"], device)
    args = (case["gen"], case["block"], case["steps"])
    ours_s, ours = timed(lambda: block_sample(model, ids, mask, *args).completions, repeats)
    naive_s, naive = timed(lambda: naive_block_sample(model, ids, mask, *args), repeats)
    fast_s, _ = timed(lambda: block_sample(model, ids, mask, *args, **SAMPLER_MODES["fast"]), repeats)
    tokens = case["batch"] * case["gen"]
    return {"setting": case, "ours_tokens_per_s": round(tokens / ours_s, 1),
            "naive_tokens_per_s": round(tokens / naive_s, 1), "speedup": round(naive_s / ours_s, 2),
            "outputs_identical": bool(torch.equal(ours, naive)),
            "fast_tokens_per_s": round(tokens / fast_s, 1), "fast_speedup": round(naive_s / fast_s, 2)}


def bench_trained_base(task_name: str, base: str, device: str, limit: int | None, repeats: int,
                       modes: list[str] | None = None) -> dict | None:
    """Greedy test accuracy and sampling time of a trained tiny base on the same prompts: the naive
    loop, the exact schedule and the fast-mode variants (`modes`, default all of SAMPLER_MODES; the
    exact schedule always runs, the reference of the accuracy change). A trained model is needed for
    the threshold to fire; random weights are never that confident."""
    from gdsd_lightning.experiment import load_experiment
    from gdsd_lightning.data import load_split
    from gdsd_lightning.generation import encode_prompts, score
    from gdsd_lightning.runs import latest_final_model
    from gdsd_lightning.tasks import task_from_config

    path = latest_final_model("runs", base)
    if path is None:
        print(f"[bench] no trained {base} (make train EXP={base}): fast mode on {task_name} skipped", flush=True)
        return None
    cfg = load_experiment(base, [])
    task = task_from_config(cfg.task)
    policy = DiffusionLM.load(path).to(device).eval()
    examples = load_split(task, cfg.task, "test")[0][:limit]
    ids, mask = (t.to(device) for t in encode_prompts(policy, task, examples, cfg.task)[1:])
    args = (cfg.sampler.gen_length, cfg.sampler.block_length, cfg.sampler.steps)
    modes = ["exact", *(m for m in modes or SAMPLER_MODES if m != "exact")]
    runs = {"naive": lambda: naive_block_sample(policy, ids, mask, *args)}
    for mode in modes:
        runs[mode] = lambda options=SAMPLER_MODES[mode]: block_sample(policy, ids, mask, *args, **options).completions
    result = {}
    for mode, run in runs.items():
        seconds, completions = timed(run, repeats)
        records = score(task, policy.decode(completions), examples)
        result[mode] = {"accuracy": round(sum(r["accuracy"] for r in records) / len(records), 4),
                        "seconds": round(seconds, 3), **layer_work(policy, run)}
    for mode in modes:
        result[mode]["speedup_over_naive"] = round(result["naive"]["seconds"] / result[mode]["seconds"], 2)
        result[mode]["accuracy_delta_points"] = round(100 * (result[mode]["accuracy"] - result["exact"]["accuracy"]), 2)
        result[mode]["layer_tokens_saving"] = round(result["exact"]["layer_tokens"] / result[mode]["layer_tokens"], 2)
    return result


def objective_step(method: str, device: str) -> Callable[[], None]:
    """One micro-batch loss step (forward + backward) of `method` at LOSS_BATCH on the tiny model."""
    from gdsd_lightning.experiment import load_experiment
    from gdsd_lightning.objectives import OBJECTIVES
    from gdsd_lightning.objectives.base import RolloutBatch

    model = stand_in(64, 4, None, device).train()
    rows, gen = LOSS_BATCH["rows"], LOSS_BATCH["gen"]
    ids, mask = random_prompts(rows, LOSS_BATCH["prompt"], device)
    completions = torch.randint(5, 15, (rows, gen), generator=generator_for(2)).to(device)
    cfg = load_experiment(f"{method}_tiny_sudoku", ["method.gate_min_reward=null"] if method == "dopsd" else [])
    objective = OBJECTIVES[method](cfg.method, gen)
    batch = RolloutBatch(ids, mask, completions, torch.ones_like(completions, dtype=torch.bool),
                         torch.rand(rows, generator=generator_for(3)).to(device), torch.randn(rows).to(device),
                         seed=0, group_size=8, correct=torch.ones(rows, dtype=torch.bool, device=device))
    if objective.record_states:
        out = block_sample(model, ids, mask, gen, cfg.sampler.block_length, cfg.sampler.steps, 0.9,
                           generator=generator_for(4), record_states=True)
        batch.completions = out.completions
        batch.extras.update(states=torch.stack(out.states, 1),
                            state_blocks=torch.tensor(out.state_blocks, device=device).expand(rows, -1))
    batch = objective.prepare(model, model, batch)

    def step():
        loss, _ = objective.loss(model, batch, 0)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def bench_losses(device: str, repeats: int) -> dict:
    """Time and peak memory of one micro-batch loss step per objective at equal batch (tiny model)."""
    from gdsd_lightning.objectives import RL_METHODS

    results = {}
    for method in RL_METHODS:
        seconds, _ = timed(objective_step(method, device), repeats)
        peak = measure_memory(method, device)["peak_bytes"]
        results[method] = {"loss_step_ms": round(1000 * seconds, 1), "peak_mib": round(peak / 2**20, 1)}
    return results


def completion_logprobs_step(kind: str, model: DiffusionLM, rows: int, prompt: int, gen: int) -> Callable[[], None]:
    """Forward + backward of the completion log-probs of `rows` random prompts and half-masked
    completions: ours, or the straightforward whole-sequence float32 logits, full log-softmax and
    gather (`full`)."""
    device = model.device
    ids, mask = random_prompts(rows, prompt, device)
    completion = torch.randint(5, 90, (rows, gen), generator=generator_for(5)).to(device)
    masked = torch.rand(rows, gen, generator=generator_for(6)).to(device) < 0.5
    model.train()

    def step():
        if kind == "ours":
            logp = completion_logprobs(model, ids, mask, completion, masked)
        else:
            noisy = torch.where(masked, model.mask_id, completion)
            logits = model(*with_prompt(ids, mask, noisy)).float()
            logp = logits.log_softmax(-1)[:, ids.shape[1]:].gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        logp.sum().backward()
        model.zero_grad(set_to_none=True)

    return step


def _memory_worker(kind: str, device: str, queue) -> None:
    """Peak memory growth of one step (run in a fresh process): `ours` / `full` completion
    log-probs at V = 128k, or an objective's loss step."""
    if kind in ("ours", "full"):
        c = MEMORY_CASE
        step = completion_logprobs_step(kind, stand_in(c["hidden"], c["layers"], c["vocab"], device),
                                        c["rows"], c["prompt"], c["gen"])
    else:
        step = objective_step(kind, device)
    reset_peak_rss()
    rss_before = current_rss_bytes()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = peak_rss_bytes() - rss_before
    queue.put({"peak_bytes": int(peak), "seconds": round(seconds, 3)})


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS count at the current RSS. (getrusage's ru_maxrss cannot be
    used: Linux carries it across exec, so a spawned worker starts with its parent's peak.)"""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def measure_memory(kind: str, device: str) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_memory_worker, args=(kind, device, queue))
    # glibc hands every block of 64 KiB or more back to the system when it is freed: resident memory
    # then follows live memory (the default adaptive threshold left +-20% noise between runs)
    previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        process.start()                      # the worker takes the environment at its start
    finally:
        if previous is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_")
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = previous
    process.join()                           # the result is a small dict: the queue never blocks the worker
    if process.exitcode != 0:
        raise RuntimeError(f"the memory measurement {kind!r} failed in its worker process (exit code "
                           f"{process.exitcode}; its traceback is above)")
    return queue.get()


def forward_flops(config, rows: int, length: int, head_positions: int) -> int:
    """Model FLOPs of one forward of a Llama-style model over `rows` sequences of `length` tokens,
    with the LM head at `head_positions` positions per row:

        per token and layer   2 (h (2 n_q + 2 n_kv) d + 3 h m)   the projections and the MLP
                            + 4 length n_q d                      scores and weighted sum (bidirectional)
        per head position     2 h V

    (h hidden, m MLP width, n_q / n_kv query / key-value heads of width d, V vocabulary). A
    backward pass costs twice a forward."""
    h, n_q, n_kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or h // n_q
    per_token_layer = 2 * (h * (2 * n_q + 2 * n_kv) * d + 3 * h * config.intermediate_size) + 4 * length * n_q * d
    return rows * (length * config.num_hidden_layers * per_token_layer + head_positions * 2 * h * config.vocab_size)


def sampler_flops(config, batch: int, prompt: int, gen: int, block: int, steps: int) -> int:
    """Model FLOPs of the exact block sampler: the whole sequence at every step, the LM head at the
    block's still-masked positions (block, block - k_0, block - k_0 - k_1, ... for the schedule k)."""
    per_step = split_evenly(torch.tensor([block]), steps // (gen // block))[0]
    still_masked = block - per_step.cumsum(0) + per_step
    return (gen // block) * sum(forward_flops(config, batch, prompt + gen, int(n)) for n in still_masked)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named `device_name`, if PEAK_TFLOPS knows it."""
    return next((tflops for name, tflops in PEAK_TFLOPS.items() if name in device_name), None)


def bench_scale(device: str, peak: float | None, model_shape: dict, loss: dict, sampler: dict,
                dtype: torch.dtype, repeats: int) -> dict:
    """Loss-pass and sampler time, achieved TFLOP/s and MFU (None without a known peak) of a stand-in."""
    model = stand_in(model_shape["hidden"], model_shape["layers"], model_shape["vocab"], device,
                     heads=model_shape["heads"], intermediate=model_shape["intermediate"]).to(dtype)
    config = model.transformer.config
    loss_s, _ = timed(completion_logprobs_step("ours", model, loss["rows"], loss["prompt"], loss["gen"]), repeats)
    model.eval()
    ids, mask = random_prompts(sampler["batch"], sampler["prompt"], device)
    args = (sampler["gen"], sampler["block"], sampler["steps"])
    sample_s, _ = timed(lambda: block_sample(model, ids, mask, *args), repeats)

    def rates(flops: int, seconds: float) -> dict:             # 4 significant digits
        tflops = flops / seconds / 1e12
        return {"seconds": float(f"{seconds:.4g}"), "tflops_per_s": float(f"{tflops:.4g}"),
                "mfu": None if peak is None else float(f"{tflops / peak:.4g}")}

    loss_flops = 3 * forward_flops(config, loss["rows"], loss["prompt"] + loss["gen"], loss["gen"])
    return {"parameters": sum(p.numel() for p in model.parameters()), "dtype": str(dtype), "peak_tflops": peak,
            "loss_pass": {"setting": loss, **rates(loss_flops, loss_s)},
            "sampler": {"setting": sampler, "tokens_per_s": round(sampler["batch"] * sampler["gen"] / sample_s, 1),
                        **rates(sampler_flops(config, sampler["batch"], sampler["prompt"], *args), sample_s)}}


def trained_bases_table(bases: dict, modes: list[str]) -> list[str]:
    """The markdown lines of the trained-bases comparison: per mode and base, accuracy and time."""
    lines = ["Trained tiny bases, greedy on the test split: accuracy, time to sample it, speed-up over the naive "
             "loop, accuracy change against the exact schedule, share of the time in the transformer layers, "
             "tokens the layers ran against the exact schedule's (n/a: base not trained):", "",
             "| mode | " + " | ".join(bases) + " |", "|---" * (len(bases) + 1) + "|"]
    for mode in ["naive", *modes]:
        cells = []
        for r in bases.values():
            if r is None:
                cells.append("n/a")
            elif mode == "naive":
                cells.append(f"{r[mode]['accuracy']} in {r[mode]['seconds']} s, layers {r[mode]['backbone_share']:.0%}")
            else:
                cells.append(f"{r[mode]['accuracy']} in {r[mode]['seconds']} s: {r[mode]['speedup_over_naive']}x, "
                             f"{r[mode]['accuracy_delta_points']:+} pts, layers {r[mode]['backbone_share']:.0%}, "
                             f"{r[mode]['layer_tokens_saving']}x fewer layer tokens")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def markdown(summary: dict) -> str:
    lines = ["# make bench", "", f"device: {summary['device']}; quick: {summary['quick']}", "",
             "| sampler case | ours tokens/s | naive tokens/s | speed-up | greedy outputs identical "
             f"| fast mode (threshold {FAST_THRESHOLD} + KV cache) tokens/s | fast speed-up |", "|---|---|---|---|---|---|---|"]
    for name, r in summary["sampler"].items():
        lines.append(f"| {name} | {r['ours_tokens_per_s']} | {r['naive_tokens_per_s']} | {r['speedup']}x "
                     f"| {r['outputs_identical']} | {r['fast_tokens_per_s']} | {r['fast_speedup']}x |")
    lines += ["", *trained_bases_table(summary["trained_bases"], list(SAMPLER_MODES))]
    lines += ["", f"Loss step per objective, {LOSS_BATCH['rows']} rows (peak: growth in one fresh process):", "",
              "| objective | loss step (ms) | peak memory (MiB) |", "|---|---|---|"]
    lines += [f"| {m} | {r['loss_step_ms']} | {r['peak_mib']} |" for m, r in summary["loss_step"].items()]
    mem = summary["loss_memory"]
    lines += ["", f"Completion log-probs at V = {LARGE_VOCAB}: peak memory ours {mem['ours']['peak_bytes'] / 2**20:.0f} MiB, "
              f"full-vocabulary {mem['full_vocabulary']['peak_bytes'] / 2**20:.0f} MiB "
              f"(ratio {summary['loss_peak_mem_ratio']})."]
    box = summary["sandbox"]
    lines += ["", f"Code sandbox start-up: judging a one-line program with one test {box['one_test_ms']} ms, "
              f"each further sandbox (one per test) {box['per_sandbox_ms']} ms; protections: {box['isolation']}."]
    scale = summary["scale"]
    if scale is None:
        lines += ["", "MFU: measured with --device cuda only."]
    else:
        loss, sampler = scale["loss_pass"], scale["sampler"]
        lines += ["", f"~1B stand-in ({scale['parameters'] / 1e9:.2f}B parameters, {scale['dtype']}, "
                  f"peak {scale['peak_tflops']} TFLOP/s):", "", "| pass | setting | time (s) | TFLOP/s | MFU | tokens/s |",
                  "|---|---|---|---|---|---|",
                  f"| loss (forward + backward) | {loss['setting']} | {loss['seconds']} | {loss['tflops_per_s']} "
                  f"| {loss['mfu']} | |",
                  f"| exact sampler | {sampler['setting']} | {sampler['seconds']} | {sampler['tflops_per_s']} "
                  f"| {sampler['mfu']} | {sampler['tokens_per_s']} |"]
    return "\n".join(lines) + "\n"


def trained_bases(device: str, quick: bool, repeats: int, modes: list[str] | None = None) -> dict:
    """`bench_trained_base` on the tiny sudoku and countdown bases (64 test prompts with --quick)."""
    return {task: bench_trained_base(task, f"tiny_{task}_sft", device, 64 if quick else None, repeats, modes)
            for task in ("sudoku", "countdown")}


def bench_modes(modes: list[str], device: str, quick: bool, out: str) -> dict:
    """`bench --modes`: only the trained-bases comparison of `modes`, to <out>/trained_bases.{json,md}."""
    from gdsd_lightning.errors import UserError

    unknown = [m for m in modes if m not in SAMPLER_MODES]
    if unknown:
        raise UserError(f"--modes: unknown sampler mode(s) {', '.join(map(repr, unknown))}; "
                        f"known: {', '.join(SAMPLER_MODES)}")
    ordered = [m for m in SAMPLER_MODES if m == "exact" or m in modes]
    print(f"[bench] naive, {', '.join(ordered)} sampling of the trained tiny bases", flush=True)
    bases = trained_bases(device, quick, 1 if quick else 3, ordered)
    summary = {"device": device, "quick": quick, "trained_bases": bases}
    table = "\n".join([f"# make bench ARGS=\"--modes {','.join(modes)}\"", "", f"device: {device}; quick: {quick}", "",
                       *trained_bases_table(bases, ordered)]) + "\n"
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "trained_bases.json", summary)
    (out_dir / "trained_bases.md").write_text(table)
    print(table, flush=True)
    return summary


def bench(quick: bool = False, device: str = "cpu", out: str = "results/bench", peak: float | None = None,
          modes: list[str] | None = None) -> dict:
    if device == "cuda" and not torch.cuda.is_available():
        from gdsd_lightning.errors import UserError

        raise UserError("--device cuda asked for, but torch sees no CUDA device")
    if modes:
        return bench_modes(modes, device, quick, out)
    repeats = 1 if quick else 3
    cases = {name: {**case, **(QUICK[name] if quick else {})} for name, case in SAMPLER_CASES.items()}
    sampler = {}
    for name, case in cases.items():
        print(f"[bench] sampler: {name}", flush=True)
        sampler[name] = bench_sampler(case, device, repeats)
    print("[bench] loss step per objective", flush=True)
    losses = bench_losses(device, repeats)
    print("[bench] naive, exact and fast sampling of the trained tiny bases", flush=True)
    trained = trained_bases(device, quick, repeats)
    measured = [r for r in trained.values() if r is not None]
    print(f"[bench] loss-pass peak memory at V = {LARGE_VOCAB}", flush=True)
    memory = {"ours": measure_memory("ours", device), "full_vocabulary": measure_memory("full", device)}
    print("[bench] code sandbox start-up", flush=True)
    sandbox = bench_sandbox(5 if quick else 15)
    scale = None
    if device == "cuda":
        peak = peak or peak_tflops(torch.cuda.get_device_name())
        print(f"[bench] MFU of a ~1B stand-in (peak {peak or 'unknown: pass --peak-tflops'} TFLOP/s)", flush=True)
        loss, sampler_setting = dict(SCALE_LOSS), dict(SCALE_SAMPLER)
        if quick:
            loss.update(QUICK_SCALE["loss"])
            sampler_setting.update(QUICK_SCALE["sampler"])
        scale = bench_scale(device, peak, SCALE_MODEL, loss, sampler_setting, torch.bfloat16, repeats)
    summary = {
        "device": device, "quick": quick,
        "sampler_speedup_exact": sampler["large_vocab"]["speedup"],
        "outputs_identical": all(r["outputs_identical"] for r in sampler.values()),
        "fast_mode_speedup": sampler["large_vocab"]["fast_speedup"],
        "fast_mode_speedup_backbone_bound": sampler["backbone_bound"]["fast_speedup"],
        "fast_mode_speedup_trained": min((r["fast"]["speedup_over_naive"] for r in measured), default=None),
        "fast_mode_accuracy_delta": max((r["fast"]["accuracy_delta_points"] for r in measured), key=abs, default=None),
        "trained_bases": trained,
        "loss_peak_mem_ratio": round(memory["ours"]["peak_bytes"] / max(1, memory["full_vocabulary"]["peak_bytes"]), 3),
        "loss_pass_mfu": scale and scale["loss_pass"]["mfu"], "sampler_mfu": scale and scale["sampler"]["mfu"],
        "sampler_tokens_per_s_1b": scale and scale["sampler"]["tokens_per_s"],
        "sandbox_start_ms": sandbox["per_sandbox_ms"],
        "sampler": sampler, "loss_step": losses, "sandbox": sandbox, "loss_memory": memory, "scale": scale,
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "summary.json", summary)
    (out_dir / "bench.md").write_text(markdown(summary))
    print(markdown(summary), flush=True)
    return summary
