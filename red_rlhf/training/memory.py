"""A start-of-run estimate of the memory one process needs: parameters x copies x bytes, gradients, AdamW states,
and the largest logits tensors. Arithmetic only; printed by the Trainer before the models are prepared.

What it counts, per process:
    weights      policy (trained), reference (frozen copy; none with LoRA), critic (PPO), HF reward models,
                 each at its precision.*_dtype; FSDP divides the *prepared* ones (policy, critic) by the processes
    gradients    one per trainable parameter, in the parameter's dtype (policy and critic)
    AdamW        two states (exp_avg, exp_avg_sq) per trainable parameter, in the parameter's dtype
    logits       rollout: batch x (prompt + response) x vocab in fp32, kept twice (logits, log-softmax);
                 update: one micro-batch of the same, three times (logits, fp32 copy, log-softmax and its gradient);
                 an upper bound: models that take `logits_to_keep` (HF causal LMs) make logits for response + 1
                 positions only (training.rollout.response_logits)
Not counted: other activations (they grow with micro-batch x sequence x hidden x layers; gradient checkpointing
keeps one layer's worth plus each layer's input), the KV cache of generation, CUDA context and allocator slack
(budget 1-3 GB), framework buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from red_rlhf.config import Config

GB = 1e9


@dataclass
class ModelSize:
    """Parameter counts of one model: all of them and the trainable ones."""

    total: int
    trainable: int = 0

    @classmethod
    def of(cls, model) -> "ModelSize":
        params = list(model.parameters()) if model is not None else []
        return cls(sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))


@dataclass
class MemoryEstimate:
    rows: list[tuple[str, str, float]] = field(default_factory=list)  # (what, how it was counted, bytes)
    header: str = ""

    def add(self, what: str, how: str, n_bytes: float) -> None:
        if n_bytes:
            self.rows.append((what, how, n_bytes))

    @property
    def total(self) -> float:
        return sum(b for _, _, b in self.rows)

    def table(self) -> str:
        lines = [self.header]
        lines += [f"  {what:<18} {how:<52} {_size(b):>10}" for what, how, b in self.rows]
        lines.append(f"  {'total':<18} {'':<52} {_size(self.total):>10}")
        lines.append("  (not counted: other activations, generation's KV cache, CUDA context and allocator slack)")
        return "\n".join(lines)


def _size(n_bytes: float) -> str:
    return f"{n_bytes / GB:.2f} GB" if n_bytes >= 0.1 * GB else f"{n_bytes / 1e6:.2f} MB"


def _bytes(dtype_name: str) -> int:
    return {"fp32": 4, "bf16": 2, "fp16": 2}[dtype_name]


def _count(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def estimate(cfg: Config, policy: ModelSize, critic: ModelSize | None, rewards: list[ModelSize], vocab_size: int,
             processes: int = 1, sharded: bool = False) -> MemoryEstimate:
    """Bytes per process for this config and these model sizes (see the module docstring for what is counted)."""
    p, est = cfg.precision, MemoryEstimate()
    shards = processes if sharded else 1
    est.header = (f"memory estimate per process ({processes} process{'es' if processes > 1 else ''}"
                  f"{', FSDP shards policy and critic' if sharded else ''}):")
    per = f" / {shards} shards" if shards > 1 else ""
    b = _bytes(p.policy_dtype)
    est.add("policy weights", f"{_count(policy.total)} x {b} B ({p.policy_dtype}){per}", policy.total * b / shards)
    if not cfg.policy.lora_r:  # with LoRA the reference is the policy's own base
        rb = _bytes(p.reference_dtype)
        est.add("reference weights", f"{_count(policy.total)} x {rb} B ({p.reference_dtype})", policy.total * rb)
    est.add("policy gradients", f"{_count(policy.trainable)} trainable x {b} B{per}", policy.trainable * b / shards)
    est.add("policy AdamW", f"2 x {_count(policy.trainable)} x {b} B{per}", 2 * policy.trainable * b / shards)
    if critic is not None:
        cb = _bytes(p.critic_dtype)
        est.add("critic weights", f"{_count(critic.total)} x {cb} B ({p.critic_dtype}){per}", critic.total * cb / shards)
        est.add("critic gradients", f"{_count(critic.trainable)} trainable x {cb} B{per}", critic.trainable * cb / shards)
        est.add("critic AdamW", f"2 x {_count(critic.trainable)} x {cb} B{per}", 2 * critic.trainable * cb / shards)
    wb = _bytes(p.reward_dtype)
    for i, reward in enumerate(rewards):
        est.add(f"reward model {i}" if len(rewards) > 1 else "reward model",
                f"{_count(reward.total)} x {wb} B ({p.reward_dtype})", reward.total * wb)
    tokens = cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens
    rollout_logits = cfg.rollouts_per_step * tokens * vocab_size * 4
    est.add("rollout logits", f"2 x {cfg.rollouts_per_step} x {tokens} tokens x {vocab_size} vocab x 4 B",
            2 * rollout_logits)
    update_logits = cfg.micro_batch_size * tokens * vocab_size * 4
    est.add("update logits", f"3 x {cfg.micro_batch_size} x {tokens} tokens x {vocab_size} vocab x 4 B",
            3 * update_logits)
    return est


def estimate_for(cfg: Config, policy, critic, rewards: list, accelerator, show: bool = True) -> MemoryEstimate:
    """The estimate for built models (before accelerate prepares them); printed by the main process."""
    from accelerate.utils import DistributedType

    hf_rewards = [ModelSize.of(r.model) for r in rewards if hasattr(r, "model")]
    vocab = policy.get_output_embeddings().weight.shape[0]
    est = estimate(cfg, ModelSize.of(policy), ModelSize.of(critic) if critic is not None else None, hf_rewards, vocab,
                   accelerator.num_processes, sharded=accelerator.distributed_type == DistributedType.FSDP)
    if show and accelerator.is_main_process:
        print(est.table())
    return est
