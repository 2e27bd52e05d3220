import pytest
import torch

from gdsd_lightning.errors import UserError
from gdsd_lightning.models import DiffusionLM
from gdsd_lightning.models.families import FAMILIES
from gdsd_lightning.models.tokenizer import build_char_tokenizer
from tests.conftest import make_tiny


@pytest.mark.parametrize("family", ["tiny-llada", "tiny-dream"])
def test_attention_is_bidirectional(family):
    model = make_tiny(family)
    x = torch.randint(5, 100, (2, 10))
    changed = x.clone()
    changed[:, -1] = 7 if x[0, -1] != 7 else 8
    # position 2 (in place) / position 2 of the aligned logits sees a later token
    assert not torch.allclose(model(x)[:, 2], model(changed)[:, 2])


def test_dream_adapter_shifts_logits_by_one(tiny_dream):
    x = torch.randint(5, 100, (2, 10))
    raw = tiny_dream.model(input_ids=x).logits
    assert torch.equal(tiny_dream(x)[:, 1:], raw[:, :-1])


@pytest.mark.parametrize("family", ["tiny-llada", "tiny-dream"])
def test_save_and_load_round_trip(tmp_path, family):
    model = make_tiny(family)
    model.save(tmp_path / "m")
    loaded = DiffusionLM.load(tmp_path / "m").eval()
    x = torch.randint(5, 100, (2, 10))
    assert torch.equal(model(x), loaded(x))
    assert loaded.family.name == family and loaded.mask_id == model.mask_id
    assert all(not m.is_causal for m in loaded.modules() if hasattr(m, "is_causal"))


def test_tokenizer_without_mask_token_is_refused(tiny_llada):
    tokenizer = build_char_tokenizer()
    tokenizer.mask_token = None
    with pytest.raises(UserError, match="no mask token"):
        DiffusionLM(tiny_llada.model, tokenizer, FAMILIES["tiny-llada"])


def test_loading_a_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(UserError, match="not a saved gdsd_lightning model"):
        DiffusionLM.load(tmp_path)


def test_prompt_and_completion_encoding(tiny_llada):
    ids, mask = tiny_llada.encode_prompts(["ab", "abcd"])
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert (ids[0, :2] == tiny_llada.pad_id).all()
    completion = tiny_llada.encode_completions(["12", "1234567"], 5)
    assert completion[0, 2:].eq(tiny_llada.eos_id).all()
    assert tiny_llada.decode(completion) == ["12", "12345"]


@pytest.mark.parametrize("family", ["tiny-llada", "tiny-dream"])
def test_logits_at_positions_equal_the_full_forward_gathered(family):
    model = make_tiny(family)
    ids = torch.randint(5, 90, (3, 10))
    attention = torch.ones_like(ids)
    positions = torch.tensor([[1, 4], [9, 0], [5, 5]])
    full = model(ids, attention)
    picked = model.logits_at(ids, attention, positions)
    expected = full.gather(1, positions.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    assert torch.allclose(picked, expected, atol=1e-5)
