"""One update on a fixed batch, run under torchrun: `torchrun --nproc_per_node N tests/dp_worker.py OUT [grpo]`.

Every process builds the same models and the same global batch of 8 rollouts, keeps its shard, and takes one
update through accelerate (DDP with gloo on CPU). Rank 0 saves the updated weights to OUT; the test compares
1 process x 8 rollouts with 2 processes x 4.

PPO shards the rows round-robin. GRPO (configs/toy-grpo.yaml: KL as a loss term, one batch-level std) gives the 8
rows 4 prompt ids, 2 rows each, shuffled within each half; each process takes one half, so a process holds whole
groups, as the trainer's rollouts do (every process samples all k responses of its own prompts).
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


GROUP_IDS = [1, 0, 0, 1, 3, 2, 3, 2]  # GRPO: prompt ids of the 8 rows, whole groups in each half


def main(out: str, accelerator=None, algorithm: str = "ppo") -> None:
    acc = accelerator or Accelerator(cpu=True)
    grpo = algorithm == "grpo"
    cfg = load_config("configs/toy-grpo.yaml" if grpo else "configs/toy.yaml",
                      ["--rollout.batch_size=8", "--algo.mini_batch_size=8", "--algo.grad_accum=2", "--algo.epochs=1",
                       "--train.log_with=", *(["--rollout.batch_size=4", "--rollout.samples_per_prompt=2"] if grpo else [])])
    tok = toy_tokenizer()
    policy = toy_policy(tok, seed=0).eval()
    critic = critic_from_policy(policy)
    torch.nn.init.normal_(critic.head.weight, std=0.1)  # non-zero values make the value loss informative
    ro, rewards = global_batch(policy, critic, tok)
    if grpo:
        ro.group_ids, ro.values, critic = torch.tensor(GROUP_IDS), None, None
        half = len(ro) // acc.num_processes
        shard = list(range(acc.process_index * half, (acc.process_index + 1) * half))
    else:
        shard = list(range(acc.process_index, len(ro), acc.num_processes))
    ro, rewards = ro.select(shard), rewards[shard]
    cfg.algo.mini_batch_size = len(ro)  # sizes are per process: one mini-batch of 8 in all
    cfg.rollout.batch_size = len(ro) // cfg.rollout.samples_per_prompt
    # SGD: the step is linear in the gradient, so the comparison tests the gradients themselves (Adam's first
    # step is lr * sign(g) and would amplify rounding noise in near-zero gradients)
    popt = torch.optim.SGD(policy.parameters(), lr=0.1)
    policy, popt = acc.prepare(policy, popt)  # one model per call: FSDP2 refuses two
    copt = None
    if critic is not None:
        critic, copt = acc.prepare(critic, torch.optim.SGD(critic.parameters(), lr=0.1))

    def total(x):
        return acc.reduce(x, reduction="sum") if acc.num_processes > 1 else x

    kl_in_reward = 0.0 if cfg.kl.use_kl_loss else 0.05
    shaped = shape_rewards(rewards, kl_per_token(ro.logprobs, ro.ref_logprobs), ro.response_mask, kl_in_reward)
    exp = compute_advantages(cfg, ro, shaped, reduce=total)
    stats = update(cfg, exp, policy, critic, popt, copt, backward=acc.backward, clip_grad=acc.clip_grad_norm_, reduce=total,
                   kl_loss_coef=0.05 if cfg.kl.use_kl_loss else 0.0)
    full = {"policy": acc.get_state_dict(policy)}  # gathers FSDP shards
    if critic is not None:
        full["critic"] = acc.get_state_dict(critic)
    # parameters this process holds: all of them, or under FSDP its shard of each (DTensor.to_local)
    held = sum(getattr(p, "to_local", lambda: p)().numel() for p in policy.parameters())
    if acc.is_main_process:
        torch.save({**full, "stats": stats, "held": held, "numel": sum(p.numel() for p in policy.parameters())}, out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    from red_rlhf.cli import exit_distributed

    main(sys.argv[1], algorithm=sys.argv[2] if len(sys.argv) > 2 else "ppo")
    exit_distributed(0)  # skip the interpreter's teardown, which gloo can abort (see exit_distributed)
