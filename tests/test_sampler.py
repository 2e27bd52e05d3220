import pytest
import torch

from gdsd_lightning.diffusion.masking import generator_for
from gdsd_lightning.diffusion import sampler as sampler_module
from gdsd_lightning.diffusion.sampler import (block_sample, dream_sample, gumbel_argmax, neg_entropy, proposal_logits,
                                             split_evenly, start_sequence, top_k_mask, top_p_filter, uniform_at)
from gdsd_lightning.models.adapter import DiffusionLM
from tests.conftest import make_tiny

PROMPTS = ["Sudoku: 1030\nSolution: ", "Countdown: 3,5,7 -> 22\n"]


def test_split_evenly_gives_remainder_to_earliest_steps():
    counts = split_evenly(torch.tensor([8, 7, 3]), 3)
    assert counts.tolist() == [[3, 3, 2], [3, 2, 2], [1, 1, 1]]


def test_top_k_mask_selects_k_highest_per_row():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, -torch.inf, 0.2, 0.8]])
    mask = top_k_mask(scores, torch.tensor([2, 1]))
    assert mask.tolist() == [[False, True, False, True], [False, False, False, True]]


def test_uniform_at_gives_a_column_the_same_draws_whichever_columns_are_kept():
    every = uniform_at(torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]), (2, 4, 3), generator_for(0), torch.float64)
    some = uniform_at(torch.tensor([[2], [0]]), (2, 4, 3), generator_for(0), torch.float64)
    assert some.shape == (2, 1, 3) and every.dtype == torch.float64
    assert torch.equal(some[0, 0], every[0, 2]) and torch.equal(some[1, 0], every[1, 0])


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_block_sampler_commits_scheduled_tokens_inside_current_block_only(tiny_llada, remasking):
    ids, mask = tiny_llada.encode_prompts(PROMPTS)
    gen_length, block_length, steps = 12, 4, 9   # 3 blocks, 3 steps each: 2,1,1 tokens per step
    out = block_sample(tiny_llada, ids, mask, gen_length, block_length, steps, temperature=1.0,
                       remasking=remasking, generator=generator_for(0), record_states=True)
    states = out.states + [out.completions]
    assert len(out.states) == steps and out.state_blocks == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for i, (before, after) in enumerate(zip(states[:-1], states[1:])):
        committed = (before == tiny_llada.mask_id) & (after != tiny_llada.mask_id)
        assert ((before != after) == committed).all(), "a committed token changed"
        assert committed.sum(1).tolist() == [[2, 1, 1][i % 3]] * len(PROMPTS)
        block = out.state_blocks[i]
        outside = torch.ones(gen_length, dtype=torch.bool)
        outside[block * block_length:(block + 1) * block_length] = False
        assert not committed[:, outside].any(), "committed outside the current block"
    assert (out.completions != tiny_llada.mask_id).all()


def test_sampler_never_touches_the_prompt(tiny_llada, monkeypatch):
    ids, mask = tiny_llada.encode_prompts(PROMPTS)
    seen = []
    original = DiffusionLM.hidden_at

    def spy(self, input_ids, attention_mask, positions):
        seen.append(input_ids[:, : ids.shape[1]].clone())
        return original(self, input_ids, attention_mask, positions)

    monkeypatch.setattr(DiffusionLM, "hidden_at", spy)
    block_sample(tiny_llada, ids, mask, 8, 4, 4, temperature=1.0, generator=generator_for(1))
    assert len(seen) == 4 and all(torch.equal(s, ids) for s in seen)


@pytest.mark.parametrize("kv_cache", [False, True])
def test_the_lm_head_sees_only_the_blocks_still_masked_positions(tiny_llada, monkeypatch, kv_cache):
    ids, mask = tiny_llada.encode_prompts(PROMPTS)
    head, widths = tiny_llada.head, []

    def spy(hidden):
        widths.append(hidden.shape[1])
        return head(hidden)

    monkeypatch.setattr(type(tiny_llada), "head", property(lambda self: spy))
    block_sample(tiny_llada, ids, mask, 12, 6, 6, temperature=1.0, generator=generator_for(1), kv_cache=kv_cache)
    assert widths == [6, 4, 2, 6, 4, 2]                    # 2 tokens per step in blocks of 6


def test_greedy_sampling_is_deterministic_and_ignores_the_generator(tiny_llada):
    ids, mask = tiny_llada.encode_prompts(PROMPTS)
    a = block_sample(tiny_llada, ids, mask, 8, 4, 4, temperature=0.0, generator=generator_for(1)).completions
    b = block_sample(tiny_llada, ids, mask, 8, 4, 4, temperature=0.0, generator=generator_for(2)).completions
    assert torch.equal(a, b)


def test_temperature_sampling_depends_only_on_the_local_generator(tiny_llada):
    ids, mask = tiny_llada.encode_prompts(PROMPTS)
    run = lambda seed: block_sample(tiny_llada, ids, mask, 8, 4, 4, 1.0, generator=generator_for(seed)).completions  # noqa: E731
    first = run(5)
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(first, run(5))
    assert not torch.equal(first, run(6))


def shift_left(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[:, 1:], t[:, -1:]], dim=1)


class ShiftedTwin(torch.nn.Module):
    """The same network as `inner`, but its raw logits and final hidden states sit one position
    earlier (Dream style)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        return type("Out", (), {"logits": shift_left(logits)})()

    def base_model(self, input_ids, attention_mask=None, position_ids=None):
        hidden = self.inner.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                       position_ids=position_ids).last_hidden_state
        return type("Out", (), {"last_hidden_state": shift_left(hidden)})()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()


def test_shifted_family_matches_in_place_family_after_the_adapter(tiny_llada):
    from dataclasses import replace

    shifted = DiffusionLM(ShiftedTwin(tiny_llada.model), tiny_llada.tokenizer,
                          replace(tiny_llada.family, shift_logits=True))
    ids, mask = tiny_llada.encode_prompts(PROMPTS)
    x = torch.cat([ids, torch.full((2, 8), tiny_llada.mask_id)], 1)
    att = torch.cat([mask, torch.ones(2, 8, dtype=torch.long)], 1)
    assert torch.allclose(shifted(x, att)[:, 1:], tiny_llada(x, att)[:, 1:])
    for temperature in (0.0, 1.0):
        a = block_sample(tiny_llada, ids, mask, 8, 4, 4, temperature, generator=generator_for(3)).completions
        b = block_sample(shifted, ids, mask, 8, 4, 4, temperature, generator=generator_for(3)).completions
        assert torch.equal(a, b)


def test_dream_sampler_fills_everything_on_its_schedule(tiny_dream):
    ids, mask = tiny_dream.encode_prompts(PROMPTS)           # prompts of different lengths: left padding
    out = dream_sample(tiny_dream, ids, mask, 10, 5, temperature=1.0, generator=generator_for(0), record_states=True)
    masked = [(s == tiny_dream.mask_id).sum(1) for s in out.states] + [(out.completions == tiny_dream.mask_id).sum(1)]
    assert masked[0].tolist() == [10, 10] and masked[-1].tolist() == [0, 0]
    assert all((a >= b).all() for a, b in zip(masked[:-1], masked[1:]))
    # every row holds the same number of masks at every step, so Dream's batch-mean count is each row's
    assert all(len(set(m.tolist())) == 1 for m in masked)


def test_gumbel_noise_in_float64_or_with_the_upstream_arithmetic_in_the_model_dtype():
    logits, u = torch.tensor([0.0, 0.001]), torch.tensor([0.5, 0.5])
    # float64: argmax(l / tau + g) with g equal for both: the larger logit wins
    assert gumbel_argmax(logits, 1.0, None, u.double()).item() == 1
    # bf16, by hand: exp(0) = 1, exp(0.001) = 1.001 rounds to 1 in bf16 (8 mantissa bits), divided by
    # the same (-log 0.5)^tau: a tie, and argmax returns the first
    assert torch.tensor(1.001, dtype=torch.bfloat16).item() == 1.0
    assert gumbel_argmax(logits, 1.0, None, u.bfloat16(), torch.bfloat16).item() == 0


def test_the_block_sampler_draws_the_noise_in_the_logits_dtype_with_gumbel_dtype_model(tiny_llada, monkeypatch):
    seen = []
    real = sampler_module.gumbel_argmax
    monkeypatch.setattr(sampler_module, "gumbel_argmax",
                        lambda logits, tau, gen, uniform=None, dtype=torch.float64: seen.append((uniform.dtype, dtype))
                        or real(logits, tau, gen, uniform, dtype))
    model = tiny_llada.to(torch.bfloat16)
    ids, mask = model.encode_prompts(PROMPTS)
    block_sample(model, ids, mask, 8, 4, 4, temperature=1.0, generator=generator_for(0), gumbel_dtype="model")
    block_sample(model, ids, mask, 8, 4, 4, temperature=1.0, generator=generator_for(0))
    assert seen[0] == (torch.bfloat16, torch.bfloat16) and seen[-1] == (torch.float64, torch.float64)


def test_dream_nucleus_keeps_a_token_whose_preceding_mass_equals_top_p_and_entropy_has_its_epsilon():
    logits = torch.tensor([torch.log(torch.tensor(2.0)), 0.0, 0.0])     # p = (.5, .25, .25), exactly
    # preceding cumulative masses 0, .5, .75: with top_p = .75 Dream drops only those above .75
    assert torch.isfinite(top_p_filter(logits, 0.75)).all()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [True, True, False]
    expected = .5 * torch.log(torch.tensor(.5 + 1e-10)) + 2 * .25 * torch.log(torch.tensor(.25 + 1e-10))
    assert neg_entropy(logits).item() == pytest.approx(expected.item(), rel=1e-6)


def test_dream_ranks_positions_by_the_entropy_of_the_tempered_nucleus(monkeypatch):
    # Two masked positions over 100 tokens. A: two equal tokens, the rest far below (entropy ln 2 at
    # any temperature). B: one token at 5 and 99 at 0: its raw distribution spreads over the tail
    # (entropy ~2.5 > ln 2), but at tau = 0.5 the top token holds 0.9955 > top_p = 0.95, so B's
    # nucleus is that token alone (entropy 0): Dream commits B first.
    vocab, mask_id = 100, 99
    a = torch.full((vocab,), -40.0)
    a[:2] = 1.0
    b = torch.zeros(vocab)
    b[0] = 5.0
    fixed = torch.stack([torch.zeros(vocab), a, b, a, a]).unsqueeze(0)         # prompt, then 4 masked positions
    assert neg_entropy(a) > neg_entropy(b)                                      # raw: A looks more confident
    monkeypatch.setattr(sampler_module, "proposal_logits", lambda model, x, attention: fixed.clone())
    model = type("Fake", (), {"mask_id": mask_id})()
    out = dream_sample(model, torch.tensor([[7]]), torch.ones(1, 1, dtype=torch.long), 4, 2, temperature=0.5,
                       top_p=0.95, generator=generator_for(0), record_states=True)
    # step 0 commits int(4 (1 - 0.5005)) = 1 position: B's (index 1 of the completion)
    assert (out.states[1][0] != mask_id).tolist() == [False, True, False, False]


def test_block_sampler_rejects_bad_block_layout(tiny_llada):
    ids, mask = tiny_llada.encode_prompts(PROMPTS)
    with pytest.raises(ValueError):
        block_sample(tiny_llada, ids, mask, 10, 4, 5)


def test_exact_sampler_matches_the_naive_published_loop_greedily(tiny_llada):
    from gdsd_lightning.commands.bench import naive_block_sample

    ids, mask = tiny_llada.encode_prompts(PROMPTS)
    ours = block_sample(tiny_llada, ids, mask, 8, 4, 4, temperature=0.0).completions
    assert torch.equal(ours, naive_block_sample(tiny_llada, ids, mask, 8, 4, 4))


def test_fast_mode_adds_confident_commits_to_the_exact_schedule(tiny_llada):
    ids, mask = tiny_llada.encode_prompts(["12+3=", "7*8="])
    exact = block_sample(tiny_llada, ids, mask, gen_length=8, block_length=4, steps=4)
    scheduled_only = block_sample(tiny_llada, ids, mask, 8, 4, 4, threshold=1.0)
    assert scheduled_only.forwards == 4                    # nothing is above 1.0: the exact schedule
    assert torch.equal(scheduled_only.completions, exact.completions)
    all_at_once = block_sample(tiny_llada, ids, mask, 8, 4, 4, threshold=1e-12)
    assert all_at_once.forwards == 2                       # every proposal is committed: one forward per block
    assert not (all_at_once.completions == tiny_llada.mask_id).any()
    x, attention = start_sequence(tiny_llada, ids, mask, 8)
    first_block = proposal_logits(tiny_llada, x, attention)[:, ids.shape[1]:ids.shape[1] + 4].argmax(-1)
    assert torch.equal(all_at_once.completions[:, :4], first_block)


@pytest.mark.parametrize("family", ["tiny-llada", "tiny-dream"])
def test_window_logits_with_a_cache_equal_the_full_forward_while_the_tokens_are_unchanged(family):
    model = make_tiny(family)
    ids, mask = model.encode_prompts(PROMPTS)
    x, attention = start_sequence(model, ids, mask, 12)
    x[:, ids.shape[1]:ids.shape[1] + 4] = model.tokenizer.convert_tokens_to_ids("7")   # a decoded first block
    start, end = ids.shape[1] + 4, ids.shape[1] + 8
    full = model(x, attention)[:, start:end]
    window = torch.arange(start, end).expand(len(PROMPTS), -1)
    first, cache = model.window_logits(x, attention, start, end, window)
    assert cache.get_seq_length() == x.shape[1] - 4                  # everything but the window
    torch.testing.assert_close(first, full, rtol=1e-5, atol=1e-5)
    some = torch.tensor([[end - 1, start], [start + 2, start + 2]])   # the head at chosen positions only
    again, same_cache = model.window_logits(x, attention, start, end, some, cache)
    assert same_cache is cache and cache.get_seq_length() == x.shape[1] - 4
    torch.testing.assert_close(again, full.gather(1, (some - start).unsqueeze(-1).expand(-1, -1, full.shape[-1])),
                               rtol=1e-5, atol=1e-5)
    x[:, start] = model.tokenizer.convert_tokens_to_ids("3")         # a commit inside the window
    changed, _ = model.window_logits(x, attention, start, end, window, cache)
    assert not torch.allclose(changed, full)


def test_kv_cache_sampling_is_exact_with_one_step_per_block_or_a_refresh_every_step(tiny_llada):
    ids, mask = tiny_llada.encode_prompts(PROMPTS)
    one_step = dict(gen_length=12, block_length=4, steps=3)
    assert torch.equal(block_sample(tiny_llada, ids, mask, **one_step, kv_cache=True).completions,
                       block_sample(tiny_llada, ids, mask, **one_step).completions)
    many = dict(gen_length=12, block_length=4, steps=12)
    cached = block_sample(tiny_llada, ids, mask, **many, kv_cache=True)
    assert cached.forwards == 12 and not (cached.completions == tiny_llada.mask_id).any()

    def sampled(**options):    # one block of 24 steps at T = 1: long enough for stale keys to change a token
        return block_sample(tiny_llada, ids, mask, 24, 24, 24, temperature=1.0,
                            generator=torch.Generator().manual_seed(0), **options).completions
    exact = sampled()
    assert not torch.equal(sampled(kv_cache=True), exact)
    assert torch.equal(sampled(kv_cache=True, kv_refresh_every=1), exact)


def test_prefix_cache_runs_the_block_and_its_suffix_against_the_cached_prefix_as_fast_dllm(tiny_llada, monkeypatch):
    """Fast-dLLM's generate_with_prefix_cache: at a block's first step a full forward, its keys and
    values kept for the positions before the block; later steps run x[:, block start:] against
    them. Written out with the backbone: one commit in the block reaches the fresh suffix, whose
    keys the dual cache would hold stale."""
    ids, mask = tiny_llada.encode_prompts(PROMPTS[:1])
    x, attention = start_sequence(tiny_llada, ids, mask, 8)
    start, length = ids.shape[1], x.shape[1]
    block = torch.arange(start, start + 4).unsqueeze(0)
    _, cache = tiny_llada.window_logits(x, attention, start, length, block)
    x[:, start] = tiny_llada.tokenizer.convert_tokens_to_ids("3")          # a commit inside the block
    cached, _ = tiny_llada.window_logits(x, attention, start, length, block, cache)
    backbone = tiny_llada.transformer.base_model
    first = backbone(input_ids=start_sequence(tiny_llada, ids, mask, 8)[0], attention_mask=attention, use_cache=True)
    prefix = first.past_key_values
    prefix.crop(start - length)                                          # keep the positions before the block
    rest = backbone(input_ids=x[:, start:], attention_mask=attention, position_ids=torch.arange(start, length).unsqueeze(0),
                    past_key_values=prefix, use_cache=True)
    torch.testing.assert_close(cached, tiny_llada.head(rest.last_hidden_state[:, :4]), rtol=1e-5, atol=1e-5)
    dual, _ = tiny_llada.window_logits(x, attention, start, start + 4, block,
                                       tiny_llada.window_logits(start_sequence(tiny_llada, ids, mask, 8)[0], attention,
                                                                start, start + 4, block)[1])
    assert not torch.allclose(dual, cached)

    windows, window_logits = [], tiny_llada.window_logits
    monkeypatch.setattr(tiny_llada, "window_logits", lambda x, a, s, e, *r: windows.append((s, e)) or window_logits(x, a, s, e, *r))
    out = block_sample(tiny_llada, ids, mask, 8, 4, 4, kv_cache="prefix")
    assert windows == [(start, length)] * 2 + [(start + 4, length)] * 2 and not (out.completions == tiny_llada.mask_id).any()


def test_dream_filters_the_nucleus_before_ranking_by_entropy_also_when_greedy(tiny_dream, monkeypatch):
    """Dream's sample_tokens applies top_p at temperature 0 too. Position 0: p = (0.9, 0.1), kept whole
    at top_p 0.95, entropy 0.325; position 1: p = 0.951 and 0.049 spread over the rest, whose second
    token's preceding mass 0.951 exceeds 0.95, so the nucleus is the top token alone: entropy 0
    (0.386 unfiltered). Of 4 masks the first step commits int(4 (1 - 0.5005)) = 1: position 1, the
    filtered ranking's choice (without the filter: position 0). Positions 2, 3 are uniform."""
    ids, mask = tiny_dream.encode_prompts(["12\n"])
    vocab, start = len(tiny_dream.tokenizer), ids.shape[1]
    probs = torch.full((1, start + 4, vocab), 1.0 / vocab)
    probs[0, start, :2] = torch.tensor([0.9, 0.1])
    probs[0, start, 2:] = 0.0
    probs[0, start + 1, 0], probs[0, start + 1, 1:] = 0.951, 0.049 / (vocab - 1)
    monkeypatch.setattr(sampler_module, "proposal_logits", lambda model, x, attention: probs.log())
    out = dream_sample(tiny_dream, ids, mask, 4, 2, temperature=0.0, top_p=0.95, record_states=True)
    assert (out.states[1][0] != tiny_dream.mask_id).tolist() == [False, True, False, False]
