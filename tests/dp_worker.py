"""One PPO update on a fixed batch, run under torchrun: `torchrun --nproc_per_node N tests/dp_worker.py OUT`.

Every process builds the same models and the same global batch of 8 rollouts, keeps its shard, and takes one
update through accelerate (DDP with gloo on CPU). Rank 0 saves the updated weights to OUT; the test compares
1 process x 8 rollouts with 2 processes x 4.
"""

import sys

import torch
from accelerate import Accelerator

from red_rlhf.core.advantages import kl_per_token, shape_rewards
from red_rlhf.config import load_config
from red_rlhf.models.build import critic_from_policy
from red_rlhf.training.ppo import compute_advantages, update
from red_rlhf.training.rollout import Rollout, response_logits, token_logprobs, truncate_at_eos
from red_rlhf.models.tiny import toy_policy, toy_tokenizer


def global_batch(policy, critic, tok, rows=8, prompt=5, response=6):
    g = torch.Generator().manual_seed(0)
    vocab = len(tok)
    prompt_ids = torch.randint(3, vocab, (rows, prompt), generator=g)
    prompt_mask = torch.ones(rows, prompt, dtype=torch.long)
    for i in range(rows):  # left padding of different lengths
        pad = i % 3
        prompt_ids[i, :pad], prompt_mask[i, :pad] = tok.pad_token_id, 0
    sampled = torch.randint(3, vocab, (rows, response), generator=g)
    sampled[1, 2] = sampled[5, 4] = tok.eos_token_id
    response_ids, response_mask, ended = truncate_at_eos(sampled, tok.eos_token_id, tok.pad_token_id)
    ro = Rollout([""] * rows, prompt_ids, prompt_mask, response_ids, response_mask, ended, None, None)
    ids, mask, pos = ro.sequences()
    with torch.no_grad():
        ro.logprobs = token_logprobs(response_logits(policy, ids, mask, pos, prompt, 1.0), response_ids)
        ro.ref_logprobs = ro.logprobs + 0.1 * torch.randn(rows, response, generator=g)
        ro.values = critic(ids, mask, pos)[:, prompt - 1: -1]
    rewards = torch.randn(rows, response, generator=g)
    return ro, rewards


def main(out: str, accelerator=None) -> None:
    acc = accelerator or Accelerator(cpu=True)
    cfg = load_config("configs/toy.yaml", ["--rollout.batch_size=8", "--algo.mini_batch_size=8", "--algo.grad_accum=2",
                                           "--algo.epochs=1", "--train.tensorboard=false"])
    tok = toy_tokenizer()
    policy = toy_policy(tok, seed=0).eval()
    critic = critic_from_policy(policy)
    torch.nn.init.normal_(critic.head.weight, std=0.1)  # non-zero values make the value loss informative
    ro, rewards = global_batch(policy, critic, tok)
    shard = list(range(acc.process_index, len(ro), acc.num_processes))
    ro, rewards = ro.select(shard), rewards[shard]
    cfg.rollout.batch_size = cfg.algo.mini_batch_size = len(ro)  # sizes are per process: one mini-batch of 8 in all
    # SGD: the step is linear in the gradient, so the comparison tests the gradients themselves (Adam's first
    # step is lr * sign(g) and would amplify rounding noise in near-zero gradients)
    popt = torch.optim.SGD(policy.parameters(), lr=0.1)
    copt = torch.optim.SGD(critic.parameters(), lr=0.1)
    policy, popt = acc.prepare(policy, popt)  # one model per call: FSDP2 refuses two
    critic, copt = acc.prepare(critic, copt)

    def total(x):
        return acc.reduce(x, reduction="sum") if acc.num_processes > 1 else x

    shaped = shape_rewards(rewards, kl_per_token(ro.logprobs, ro.ref_logprobs), ro.response_mask, 0.05)
    exp = compute_advantages(cfg, ro, shaped, reduce=total)
    stats = update(cfg, exp, policy, critic, popt, copt, backward=acc.backward, clip_grad=acc.clip_grad_norm_, reduce=total)
    full = {"policy": acc.get_state_dict(policy), "critic": acc.get_state_dict(critic)}  # gathers FSDP shards
    # parameters this process holds: all of them, or under FSDP its shard of each (DTensor.to_local)
    held = sum(getattr(p, "to_local", lambda: p)().numel() for p in policy.parameters())
    if acc.is_main_process:
        torch.save({**full, "stats": stats, "held": held, "numel": sum(p.numel() for p in policy.parameters())}, out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    from red_rlhf.cli import exit_distributed

    main(sys.argv[1])
    exit_distributed(0)  # skip the interpreter's teardown, which gloo can abort (see exit_distributed)
