"""Tier 1: the fast paths of the training step equal their plain versions (logits of response positions only;
fused AdamW), and the rollout's log-probs and values are those the update computes at the same weights."""

import pytest
import torch

from red_rlhf.core.masks import position_ids
from red_rlhf.models.build import adamw
from red_rlhf.models.tiny import tiny_causal_lm, tiny_tokenizer
from red_rlhf.training.ppo import compute_advantages, update
from red_rlhf.training.rollout import _takes_logits_to_keep, response_logits
from red_rlhf.training.trainer import Trainer
from tests.helpers import toy


class AllLogits(torch.nn.Module):
    """The same model behind a forward without `logits_to_keep`: the plain path (LM head on every position)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_response_logits_of_the_last_positions_equal_the_slice_of_all_logits():
    tok = tiny_tokenizer("gpt2")
    model = tiny_causal_lm(tok, context=64, seed=0).eval()
    torch.manual_seed(0)
    ids = torch.randint(5, len(tok), (3, 11))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded prompt
    mask[2, -2:] = 0  # a response that ended early
    pos = position_ids(mask)
    assert _takes_logits_to_keep(model) and not _takes_logits_to_keep(AllLogits(model))
    with torch.no_grad():
        fast = response_logits(model, ids, mask, pos, response_start=6, temperature=0.7)
        plain = response_logits(AllLogits(model), ids, mask, pos, response_start=6, temperature=0.7)
        by_hand = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, 5:-1] / 0.7
    assert fast.shape == (3, 5, len(tok))
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast, by_hand, rtol=0, atol=1e-6)


def test_lora_wrapped_policies_take_the_fast_path():
    from peft import LoraConfig, get_peft_model

    tok = tiny_tokenizer("gpt2")
    lora = get_peft_model(tiny_causal_lm(tok, context=64, seed=0), LoraConfig(r=4, target_modules=["c_attn"]))
    assert _takes_logits_to_keep(lora)


def test_fused_adamw_takes_the_same_steps_as_the_per_tensor_loop():
    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    fast = [torch.nn.Parameter(p.clone()) for p in start]
    slow = [torch.nn.Parameter(p.clone()) for p in start]
    fast_opt, slow_opt = adamw(fast, lr=1e-2), torch.optim.AdamW(slow, lr=1e-2, eps=1e-5, foreach=False)
    assert fast_opt.defaults["fused"] and not slow_opt.defaults["fused"]
    for _ in range(5):
        grads = [torch.randn_like(p) for p in start]
        for params, opt in ((fast, fast_opt), (slow, slow_opt)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for f, s, p0 in zip(fast, slow, start):
        assert not torch.equal(f, p0)
        torch.testing.assert_close(f, s, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- the rollout's passes are the update's


@pytest.mark.parametrize("extra", [(), ("--policy.lora_r=4", "--policy.lora_target_modules=c_attn")],
                         ids=["full", "lora"])  # lora: the reference pass turns the adapters off, and on again
def test_the_first_optimiser_step_is_on_policy(tmp_path, extra):
    """At the rollout's weights the update's forward gives the rollout's log-probs and values (the same temperature,
    position ids and model), so the first optimiser step's probability ratio is 1 up to float rounding."""
    cfg = toy(tmp_path, "--algo.mini_batch_size=16", "--algo.epochs=1", "--rollout.temperature=0.7",
              "--algo.whiten_advantages=false", *extra)
    trainer = Trainer(cfg)
    moved = torch.Generator().manual_seed(0)
    with torch.no_grad():  # zero-initialised at the start (LoRA's B: policy == reference; the value head): moved
        for name, p in [*trainer.policy.named_parameters(), *trainer.critic.named_parameters()]:
            if "lora_B" in name or name.startswith("head."):
                p.normal_(0, 0.05, generator=moved)
    prompts = ["good " * (i % 3) + p for i, p in enumerate(trainer.order.next_batch(cfg.rollout.batch_size))]
    torch.manual_seed(0)
    ro = trainer.rollout(prompts)  # prompts of 3 lengths: left padding, so position ids count
    assert len(set(ro.prompt_mask.sum(-1).tolist())) == 3 and ro.values.std() > 0
    assert extra == () or not torch.allclose(ro.logprobs, ro.ref_logprobs)
    exp = compute_advantages(cfg, ro, torch.where(ro.response_mask, 1.0, 0.0))
    m, tokens = ro.response_mask, ro.response_mask.sum()
    stats = update(cfg, exp, trainer.policy, trainer.critic, trainer.policy_opt, trainer.critic_opt)
    # ratio 1 and unchanged values: each loss is its unclipped value at the rollout's numbers (first order in a change)
    assert stats["policy_loss"] == pytest.approx((-torch.where(m, exp.advantages, 0).sum() / tokens).item(), rel=1e-5)
    expected_value_loss = 0.5 * torch.where(m, (ro.values - exp.returns) ** 2, 0).sum() / tokens
    assert stats["value_loss"] == pytest.approx(expected_value_loss.item(), rel=1e-5)
    assert stats["clip_fraction"] == 0 and abs(stats["approx_kl"]) < 1e-6
