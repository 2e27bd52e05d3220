import itertools
import math

import torch

from gdsd_lightning.diffusion.estimators import (
    completion_logprobs, coupled_elbo, denoiser_score, valid_completion_mask,
)
from gdsd_lightning.diffusion.masking import (
    block_random_mask, complement, full_completion_mask, generator_for, stratified_mask,
)


def test_stratified_counts_follow_the_formula_and_cover_all_levels():
    length, rows = 15, 4
    seen = set()
    for seed in range(40):
        mask, n = stratified_mask(rows, length, generator_for(seed))
        assert mask.sum(1).tolist() == n.tolist()
        k = n[0].item()  # row 0 has offset 0, so n_0 = k
        expected = [(k + math.floor(i * (length + 1) / rows + 0.5)) % (length + 1) for i in range(rows)]
        assert n.tolist() == expected
        seen.add(k)
    assert len(seen) > 10  # k really is drawn, not fixed


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


def test_full_completion_masks_every_completion_token_and_some_prompt_tokens():
    prompt_mask = torch.tensor([[0, 1, 1, 1] * 50])
    prompt_masked, completion_masked = full_completion_mask(1, 6, prompt_mask, 0.15, generator_for(0))
    assert completion_masked.all()
    assert not prompt_masked[prompt_mask == 0].any()      # padding is never masked
    assert abs(prompt_masked.float().sum().item() / 150 - 0.15) < 0.06


def test_block_random_mask_structure():
    valid = torch.tensor([[True] * 10 + [False] * 6] * 200)
    mask, t_hat = block_random_mask(valid, 4, generator_for(0))
    assert mask[:, 10:].all(), "positions after EOS are always masked"
    for row in mask:
        blocks = (row & valid[0]).view(4, 4)
        first = next(b for b in range(4) if blocks[b].any())    # the chosen block k
        assert first < 3, "block k holds valid tokens"
        assert not blocks[:first].any()                         # earlier blocks clean
        assert row[(first + 1) * 4:].all()                      # later blocks fully masked
    assert ((t_hat > 0) & (t_hat <= 1)).all()
    assert torch.allclose(t_hat, (mask & valid).sum(1) / 10.0)


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
