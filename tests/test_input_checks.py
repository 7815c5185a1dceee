"""Tier 1: prefix_scores and token_rewards refuse masks, ids and shapes that would give silently wrong scores."""

import pytest
import torch

from red_rlhf.core.redistribute import token_rewards
from red_rlhf.models.prefix import pooled_attention, prefix_scores


@pytest.fixture
def batch(gpt2_tok):
    enc = gpt2_tok(["The movie was good", "Fun"], return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


@pytest.mark.parametrize("mode", ["causal", "prefix"])
def test_a_mask_with_values_other_than_0_and_1_is_an_error(gpt2_rm, batch, mode):
    ids, mask = batch
    bad = mask.clone()
    bad[0, 0] = 2
    with pytest.raises(ValueError, match=r"attention_mask must hold only 0 and 1 \(or be bool\), got values \[2\]"):
        prefix_scores(gpt2_rm, ids, bad, mode=mode)
    # a bool mask is the same mask
    torch.testing.assert_close(prefix_scores(gpt2_rm, ids, mask.bool(), mode=mode), prefix_scores(gpt2_rm, ids, mask, mode=mode))


def test_ids_outside_the_vocabulary_and_float_ids_are_errors(gpt2_rm, batch):
    ids, mask = batch
    vocab = gpt2_rm.get_input_embeddings().num_embeddings
    bad = ids.clone()
    bad[1, -1] = vocab
    with pytest.raises(ValueError, match=rf"row\(s\) \[1\] hold id\(s\) \[{vocab}\] outside the reward model's vocabulary"):
        prefix_scores(gpt2_rm, bad, mask)
    bad[1, -1] = -1
    with pytest.raises(ValueError, match="outside the reward model's vocabulary"):
        pooled_attention(gpt2_rm, bad, mask)
    with pytest.raises(ValueError, match="input_ids must hold integer token ids"):
        prefix_scores(gpt2_rm, ids.float(), mask)


def test_token_rewards_checks_shapes_and_mask_values():
    prompt, scores, mask = torch.randn(2), torch.randn(2, 5), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    token_rewards("red", prompt, scores, mask)  # well-formed
    with pytest.raises(ValueError, match=r"scores of shape \(2, 5\) and prompt scores of shape \(2,\) do not fit the "
                                         r"response mask \(2, 4\)"):
        token_rewards("red", prompt, scores, mask[:, :4])
    with pytest.raises(ValueError, match=r"response_mask must be \(B, R\), got shape \(5,\)"):
        token_rewards("sparse", prompt, scores[0], mask[0])
    with pytest.raises(ValueError, match=r"response_mask must hold only 0 and 1 .* got values \[3\]"):
        token_rewards("sparse", prompt, scores, mask * 3)
    with pytest.raises(ValueError, match="scores must be floating point"):
        token_rewards("red", prompt, scores.long(), mask)
