"""Tier 1: the fast paths of the training step equal their plain versions (logits of response positions only;
fused AdamW; the update's first step on the rollout's own forward passes)."""

import math

import pytest
import torch

from red_rlhf.core.masks import position_ids
from red_rlhf.models.build import adamw
from red_rlhf.models.tiny import tiny_causal_lm, tiny_tokenizer
from red_rlhf.training.ppo import compute_advantages, first_step_reuses_rollout, update
from red_rlhf.training.rollout import _takes_logits_to_keep, response_logits, token_logprobs
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


# ---------------------------------------------------------------- the update's first step on the rollout's passes


@pytest.mark.parametrize("extra", [(), ("--algo.entropy_coef=0.05",),
                                   ("--algo.algorithm=rloo", "--rollout.batch_size=8", "--rollout.samples_per_prompt=2"),
                                   ("--policy.lora_r=4", "--policy.lora_target_modules=c_attn")],
                         ids=["ppo", "ppo-entropy-bonus", "rloo", "lora"])  # lora: the reference pass toggles adapters
def test_first_step_on_the_rollouts_passes_equals_recomputing_them(tmp_path, extra):
    cfg = toy(tmp_path, "--algo.mini_batch_size=16", "--algo.epochs=1", *extra)
    assert first_step_reuses_rollout(cfg, distributed=False)
    trainer = Trainer(cfg)
    start = {"policy": _weights(trainer.policy), "critic": _weights(trainer.critic)}
    torch.manual_seed(0)
    ro, kept = trainer.rollout_passes(trainer.order.next_batch(cfg.rollout.batch_size), keep_graphs=True)
    assert kept.logprobs.requires_grad and (trainer.critic is None or kept.values.requires_grad)
    assert kept.entropy.requires_grad == bool(cfg.algo.entropy_coef)
    seq, mask, pos = ro.sequences()
    with torch.no_grad():  # the plain rollout's numbers: separate no-grad passes
        plain = token_logprobs(response_logits(trainer.policy, seq, mask, pos, ro.prompt_ids.shape[1], 1.0), ro.response_ids)
    torch.testing.assert_close(ro.logprobs, plain, rtol=0, atol=1e-5)
    noise = torch.randn(ro.response_mask.shape, generator=torch.Generator().manual_seed(1)).to(ro.response_mask.device)
    rewards = torch.where(ro.response_mask, noise, 0)
    exp = compute_advantages(cfg, ro, rewards)

    def one_step(first_pass):  # one SGD step (epochs 1, one mini-batch): the parameters move by the gradients
        for name in ("policy", "critic") if first_pass is None else ():  # (loading bumps the graphs' versions)
            if getattr(trainer, name) is not None:
                getattr(trainer, name).load_state_dict(start[name])
        opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5) if m is not None else None
                for m in (trainer.policy, trainer.critic)]
        stats = update(cfg, exp, trainer.policy, trainer.critic, *opts, first_pass=first_pass,
                       generator=torch.Generator().manual_seed(2))
        return {"policy": _weights(trainer.policy), "critic": _weights(trainer.critic)}, stats

    reused, reused_stats = one_step(kept)  # first: it needs the weights the graphs were built on
    recomputed, recomputed_stats = one_step(None)
    assert reused_stats["approx_kl"] == 0 and reused_stats["clip_fraction"] == 0  # the ratio is exactly 1
    for name in ("policy", "critic") if trainer.critic is not None else ("policy",):
        moved = max((reused[name][k] - start[name][k]).abs().max().item() for k in start[name])
        assert moved > 1e-3, name
        for k in start[name]:
            torch.testing.assert_close(reused[name][k], recomputed[name][k], rtol=0, atol=1e-5)
    for key in ("policy_loss", "entropy", "policy_grad_norm"):
        assert reused_stats[key] == pytest.approx(recomputed_stats[key], rel=1e-4, abs=1e-6), key


def test_the_first_step_reuses_the_rollout_only_where_it_covers_the_whole_batch(tmp_path):
    whole = toy(tmp_path, "--algo.mini_batch_size=16")
    assert first_step_reuses_rollout(whole, distributed=False)
    assert not first_step_reuses_rollout(whole, distributed=True)  # engines pair their own forward and backward
    assert not first_step_reuses_rollout(toy(tmp_path, "--algo.mini_batch_size=8"), False)  # configs/toy.yaml: 2 mini-batches
    assert not first_step_reuses_rollout(toy(tmp_path, "--algo.mini_batch_size=16", "--algo.grad_accum=2"), False)
    trainer = Trainer(toy(tmp_path, "--algo.mini_batch_size=16", "--train.steps=2", name="reuse"))
    assert trainer.first_step_reuses_rollout
    history = trainer.train()
    assert len(history) == 2 and all(math.isfinite(row["policy_loss"]) for row in history)


def _weights(model) -> dict[str, torch.Tensor] | None:
    return None if model is None else {k: v.detach().clone() for k, v in model.state_dict().items()}
