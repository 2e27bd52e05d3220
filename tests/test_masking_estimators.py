import itertools
import math

import torch

from gdsd_lightning.diffusion.estimators import (
    completion_logprobs, coupled_elbo, denoiser_score, valid_completion_mask,
)
from gdsd_lightning.diffusion.masking import (
    block_random_mask, complement, full_completion_mask, generator_for, stratified_mask,
)


def test_stratified_counts_round_half_to_even_and_follow_the_release_draw_order():
    # b = 2 rows, L = 2: levels k and k + 1.5. By hand: k = 0 -> (0, 2); k = 1 -> (1, round(2.5) = 2,
    # half to even; floor(x + 0.5) would give 3 mod 3 = 0); k = 2 -> (2, round(3.5) = 4 mod 3 = 1).
    by_k = {0: [0, 2], 1: [1, 2], 2: [2, 1]}
    seen = set()
    for seed in range(30):
        replay = generator_for(seed)                      # the rule's draws: k, then one permutation per row
        k = int(torch.randint(0, 3, (), generator=replay))
        perms = [torch.randperm(2, generator=replay) for _ in range(2)]
        mask, n = stratified_mask(2, 2, generator_for(seed))
        assert n.tolist() == by_k[k]
        assert mask.tolist() == [(perm < count).tolist() for perm, count in zip(perms, by_k[k])]
        seen.add(k)
    assert seen == {0, 1, 2}
    length, rows = 15, 4                                  # every row keeps its count, all levels occur
    levels = set()
    for seed in range(40):
        mask, n = stratified_mask(rows, length, generator_for(seed))
        assert mask.sum(1).tolist() == n.tolist()
        levels.update(n.tolist())
    assert len(levels) > 10


def test_stratified_positions_are_uniform():
    counts = torch.zeros(8)
    for seed in range(2000):
        mask, _ = stratified_mask(1, 8, generator_for(seed))
        counts += mask[0].float()
    assert (counts / counts.sum() - 1 / 8).abs().max() < 0.02


def test_complement_masks_exactly_the_kept_positions():
    mask, _ = stratified_mask(3, 10, generator_for(0))
    comp = complement(mask)
    assert (mask ^ comp).all() and not (mask & comp).any()


def test_masks_depend_only_on_the_seed():
    a, _ = stratified_mask(4, 12, generator_for(7))
    torch.manual_seed(99)
    b, _ = stratified_mask(4, 12, generator_for(7))
    assert torch.equal(a, b)


def test_full_completion_masks_every_completion_token_and_prompt_positions_from_one_draw_per_position():
    prompt_len, length = 5, 3
    prompt_masked, completion_masked = full_completion_mask(2, length, prompt_len, 0.5, generator_for(3))
    u = torch.rand(2, prompt_len + length, generator=generator_for(3))   # d1: one uniform per position
    assert completion_masked.all()
    assert prompt_masked.tolist() == (u[:, :prompt_len] < 0.5).tolist()


def test_block_random_mask_follows_the_release_rule_by_hand():
    # L = 6 in three blocks of 2; row 0 ends at position 2 (EOS included: 3 valid tokens, blocks
    # 0-1 hold them), row 1 has no EOS; prompt of 2 positions; 2 draws; p = 0.5.
    valid = torch.tensor([[True, True, True, False, False, False], [True] * 6])
    block, draws, prompt_len, p, seed = 2, 2, 2, 0.5, 11
    prompt_masked, mask, t_hat = block_random_mask(valid, block, draws, prompt_len, p, generator_for(seed))
    replay = generator_for(seed)
    chosen = [(torch.randperm(3, generator=replay)[:draws] % m).tolist() for m in (2, 3)]   # one permutation a row
    expected = torch.zeros(2, draws, 6, dtype=torch.bool)
    for i, n in enumerate((3, 6)):
        for d, k in enumerate(chosen[i]):
            size = min(block, n - k * block)                    # valid tokens of block k
            count = int(torch.randint(1, size + 1, (1, 1), generator=replay))
            order = torch.randperm(size, generator=replay)
            for o in range(size):
                expected[i, d, k * block + o] = bool(order[o] < count)
            expected[i, d, (k + 1) * block:] = True             # later blocks fully masked
            expected[i, d, n:] = True                           # after the first EOS
    clean_prompt, clean, _ = block_random_mask(valid, block, draws, prompt_len, 0.0, generator_for(seed))
    assert not clean_prompt.any() and clean.tolist() == expected.tolist()     # use_mask_prompt off
    u = torch.rand(2, draws, prompt_len + 6, generator=replay) < p
    for i in range(2):
        for d, k in enumerate(chosen[i]):
            expected[i, d, :k * block] |= u[i, d, prompt_len:prompt_len + k * block]   # earlier blocks w.p. p
    assert prompt_masked.tolist() == u[..., :prompt_len].tolist()
    assert mask.tolist() == expected.tolist()
    assert torch.allclose(t_hat, (expected & valid.unsqueeze(1)).sum(-1) / valid.sum(-1, keepdim=True).float())


def test_valid_completion_mask_includes_first_eos():
    completion = torch.tensor([[5, 6, 2, 2, 7], [5, 6, 7, 8, 9]])
    assert valid_completion_mask(completion, 2).tolist() == [[True, True, True, False, False], [True] * 5]


def test_denoiser_score_by_hand():
    masked = torch.tensor([[True, False, True]])
    view = torch.tensor([[-1.0, -9.0, -3.0]])
    comp = torch.tensor([[-9.0, -2.0, -9.0]])
    assert denoiser_score(view, comp, masked).item() == 0.5 * (-1 - 3 - 2)
    elbo = coupled_elbo(view, comp, masked)   # n = 2, L = 3: t = 2/4, t_bar = 1/4
    assert math.isclose(elbo.item(), 0.5 * ((-1 - 3) / 0.5 + (-2) / 0.25))


class ExactConditionals(torch.nn.Module):
    """A toy denoiser whose conditionals are exact: p(x_l = v | z) = q(x_l = v | unmasked of z)
    for a joint q over all V^L completions (prompt of one fixed token)."""

    mask_id = 3

    def __init__(self, length: int, vocab: int, seed: int):
        super().__init__()
        self.length, self.vocab = length, vocab
        gen = torch.Generator().manual_seed(seed)
        self.sequences = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
        self.log_q = torch.randn(len(self.sequences), generator=gen).mul(2).log_softmax(0)
        self.head = torch.nn.Linear(vocab + 1, vocab + 1, bias=False)     # identity: "hidden" = logits
        self.head.weight.data = torch.eye(vocab + 1)

    def hidden_at(self, input_ids, attention_mask, positions):
        logits = self(input_ids, attention_mask)
        return logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))

    def forward(self, input_ids, attention_mask=None):
        z = input_ids[:, 1:]
        logits = torch.full((*input_ids.shape, self.vocab + 1), -1e9)
        for b, row in enumerate(z):
            known = row != self.mask_id
            consistent = (self.sequences[:, known] == row[known]).all(1)
            weights = self.log_q.masked_fill(~consistent, -torch.inf)
            for pos in range(self.length):
                for v in range(self.vocab):
                    logits[b, pos + 1, v] = torch.logsumexp(weights[self.sequences[:, pos] == v], 0)
        return logits


def test_coupled_elbo_expectation_is_the_exact_log_likelihood():
    length, vocab = 3, 3
    model = ExactConditionals(length, vocab, seed=0)
    prompt, prompt_mask = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long)
    for index in (0, 7, 20):
        x = model.sequences[index : index + 1]
        per_level = []
        for n in range(length + 1):   # n ~ U{0..L}, positions uniform given n
            values = []
            for positions in itertools.combinations(range(length), n):
                masked = torch.zeros(1, length, dtype=torch.bool)
                masked[0, list(positions)] = True
                view = completion_logprobs(model, prompt, prompt_mask, x, masked)
                comp = completion_logprobs(model, prompt, prompt_mask, x, ~masked)
                values.append(coupled_elbo(view, comp, masked).item())
            per_level.append(sum(values) / len(values))
        expectation = sum(per_level) / len(per_level)
        assert math.isclose(expectation, model.log_q[index].item(), rel_tol=1e-5, abs_tol=1e-5)


def test_chunked_token_logprobs_match_the_full_vocabulary_computation(monkeypatch):
    from gdsd_lightning.diffusion import estimators

    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(3, 7, 8, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    full = head(hidden).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    (grad_full,) = torch.autograd.grad(full.sum(), hidden)
    monkeypatch.setattr(estimators, "LOGIT_BUDGET", 3 * 50 * 2)     # chunks of 2 positions, recomputed
    chunked = estimators.token_logprobs(head, hidden, targets)
    (grad_chunked,) = torch.autograd.grad(chunked.sum(), hidden)
    assert torch.allclose(chunked, full, atol=1e-5) and torch.allclose(grad_chunked, grad_full, atol=1e-5)
