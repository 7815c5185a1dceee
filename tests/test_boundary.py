"""Tier 2: a prompt/response boundary that falls inside a reward-model token (prompt "The movie was go",
response "od fun": the reward model reads one token " good" across the boundary).

Rule: R(x) is the reward model's score of the prompt alone, as it tokenizes the prompt alone; the first response
token's reward is s_1 - R(x), so the rewards sum to R(x, y) - R(x) for the R(x) that is reported.
`HFRewardModel.score_cuts` scores the prompt alone for rows where a token spans the boundary: the joint
tokenization's last token before the boundary ends a shorter prompt ("The movie was"), whose score is not R(x).
"""

import pytest
import torch

from red_rlhf.models.scorer import TokenRewardScorer
from red_rlhf.models.sources import HFRewardModel


def alone(rm, tok, text):
    """The reward model's score of `text`, tokenized on its own, one unpadded call."""
    with torch.no_grad():
        return rm(input_ids=torch.tensor([tok(text).input_ids])).logits[0, 0].item()


@pytest.fixture
def straddling(gpt2_rm, gpt2_tok):
    prompt, response = "The movie was go", "od fun"
    spans = gpt2_tok(prompt + response, return_offsets_mapping=True).offset_mapping
    assert any(s < len(prompt) < e for s, e in spans)  # the boundary really falls inside a token
    [row] = TokenRewardScorer(HFRewardModel(gpt2_rm, gpt2_tok)).score([prompt], [response])
    return prompt, response, row


def test_rewards_sum_to_the_reported_scores(straddling):
    _, _, row = straddling
    assert sum(row.rewards) == pytest.approx(row.final_score - row.prompt_score, abs=1e-5)


def test_the_reported_prompt_score_is_the_prompt_alone(straddling, gpt2_rm, gpt2_tok):
    prompt, response, row = straddling
    assert row.prompt_score == pytest.approx(alone(gpt2_rm, gpt2_tok, prompt), abs=1e-4)
    assert row.final_score == pytest.approx(alone(gpt2_rm, gpt2_tok, prompt + response), abs=1e-4)
