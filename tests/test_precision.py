"""Precision and memory options on CPU: bf16 + autocast near float32, gradient checkpointing exact, device checks,
and the memory estimate's arithmetic on a model of known size."""

import copy

import pytest
import torch

from red_rlhf.config import ConfigError, load_config
from red_rlhf.core.advantages import kl_per_token, shape_rewards
from red_rlhf.models.build import critic_from_policy
from red_rlhf.models.precision import check_device, enable_gradient_checkpointing
from red_rlhf.models.tiny import toy_policy, toy_tokenizer
from red_rlhf.training import memory
from red_rlhf.training.ppo import compute_advantages, update
from red_rlhf.training.rollout import response_logits, token_logprobs
from tests.dp_worker import global_batch

# bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%). Measured on this fixed batch (CPU, torch 2.13):
# |bf16 - fp32| of the first step's losses was 8e-5 (policy loss -0.0181), 1.4e-3 (value loss 1.78), < 1e-5
# (entropy 3.73); we allow 1% of the float32 value + 0.002.
BF16_REL_TOL, BF16_ABS_TOL = 0.01, 0.002
BASE = ["--reward.function=m:f", "--algo.critic_init=policy"]  # a config that validates without models


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process; these tests need another one, then the default."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def toy_models():
    tok = toy_tokenizer()
    policy = toy_policy(tok, seed=0).eval()
    critic = critic_from_policy(policy)
    torch.nn.init.normal_(critic.head.weight, std=0.1)  # non-zero values: the value loss is informative
    return tok, policy, critic


def first_step_losses(precision: dict) -> dict[str, float]:
    """Losses of one PPO mini-batch at the initial weights, on a fixed batch (old log-probs and values in fp32)."""
    from accelerate import Accelerator

    from red_rlhf.models.precision import torch_dtype

    cfg = load_config("configs/toy.yaml", ["--rollout.batch_size=8", "--algo.mini_batch_size=8", "--algo.grad_accum=2",
                                           "--algo.epochs=1", "--train.log_with="]
                      + [f"--precision.{k}={v}" for k, v in precision.items()])
    tok, policy, critic = toy_models()
    ro, rewards = global_batch(policy, critic, tok)
    # the rollout's policy was a little different (else the ratio is 1 and the first policy loss exactly 0)
    ro.logprobs = ro.logprobs + 0.3 * torch.randn(ro.logprobs.shape, generator=torch.Generator().manual_seed(1))
    policy.to(torch_dtype(cfg.precision.policy_dtype))
    critic.to(torch_dtype(cfg.precision.critic_dtype))
    acc = Accelerator(cpu=True, mixed_precision=cfg.precision.mixed_precision)
    popt, copt = torch.optim.SGD(policy.parameters(), lr=0.0), torch.optim.SGD(critic.parameters(), lr=0.0)
    policy, critic, popt, copt = acc.prepare(policy, critic, popt, copt)
    shaped = shape_rewards(rewards, kl_per_token(ro.logprobs, ro.ref_logprobs), ro.response_mask, 0.05)
    exp = compute_advantages(cfg, ro, shaped)
    return update(cfg, exp, policy, critic, popt, copt, backward=acc.backward, clip_grad=acc.clip_grad_norm_)


@pytest.mark.parametrize("precision", [
    {"mixed_precision": "bf16"},                                                     # autocast, fp32 weights
    {"policy_dtype": "bf16", "critic_dtype": "bf16", "mixed_precision": "bf16"},      # bf16 weights + autocast
])
def test_bf16_first_step_losses_are_within_tolerance_of_fp32(fresh_accelerate_state, precision):
    reference = first_step_losses({})
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    low = first_step_losses(precision)
    for key in ("policy_loss", "value_loss", "entropy"):
        assert abs(low[key] - reference[key]) <= BF16_REL_TOL * abs(reference[key]) + BF16_ABS_TOL, \
            (key, low[key], reference[key])
    assert abs(reference["policy_loss"]) > 0.01 and reference["value_loss"] > 0.5  # informative losses, not zeros
    # and bf16 really ran: the losses are not bit-identical to float32
    assert any(low[k] != reference[k] for k in ("policy_loss", "value_loss", "entropy"))


def gradients(model, loss_fn) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss_fn(model).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients():
    tok, policy, critic = toy_models()
    ro, _ = global_batch(policy, critic, tok)
    ids, mask, pos = ro.sequences()
    start = ro.prompt_ids.shape[1]

    def policy_loss(model):
        return token_logprobs(response_logits(model, ids, mask, pos, start, 1.0), ro.response_ids).sum()

    def critic_loss(model):
        return (model(ids, mask, pos) ** 2).sum()

    for model, loss_fn, attn in ((policy, policy_loss, policy.transformer.h[0].attn),
                                 (critic, critic_loss, critic.trunk.h[0].attn)):
        calls = []
        attn.register_forward_hook(lambda *args: calls.append(1))
        plain = gradients(model, loss_fn)
        plain_calls, calls[:] = len(calls), []
        checkpointed = copy.deepcopy(model)
        assert enable_gradient_checkpointing(checkpointed) == 2  # both transformer layers
        assert not any(m.training for m in checkpointed.modules() if isinstance(m, torch.nn.Dropout))  # still off
        hooked = checkpointed.transformer.h[0].attn if model is policy else checkpointed.trunk.h[0].attn
        hooked._forward_hooks.clear()
        hooked.register_forward_hook(lambda *args: calls.append(1))
        again = gradients(checkpointed, loss_fn)
        assert plain_calls == 1 and len(calls) == 2  # the layer ran again in the backward pass
        assert plain.keys() == again.keys()
        for name in plain:
            torch.testing.assert_close(again[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_options_the_device_cannot_run_are_refused_naming_the_field():
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match=r"precision.mixed_precision 'fp16' needs a CUDA GPU"):
        check_device(load_config(None, BASE + ["--precision.mixed_precision=fp16"]).precision, cpu)
    with pytest.raises(ConfigError, match=r"precision.reward_dtype 'fp16' needs a CUDA GPU"):
        check_device(load_config(None, BASE + ["--precision.reward_dtype=fp16"]).precision, cpu)
    flash = load_config(None, BASE + ["--precision.attn_implementation=flash_attention_2"]).precision
    import importlib.util

    expected = "needs a CUDA GPU" if importlib.util.find_spec("flash_attn") else "needs the flash-attn package"
    with pytest.raises(ConfigError, match=rf"precision.attn_implementation 'flash_attention_2' {expected}"):
        check_device(flash, cpu)
    check_device(load_config(None, BASE + ["--precision.policy_dtype=bf16",
                                    "--precision.mixed_precision=bf16"]).precision, cpu)  # bf16 runs on CPU


def test_combinations_that_cannot_work_anywhere_fail_validation():
    with pytest.raises(ConfigError, match=r"precision.policy_dtype 'fp16': float16 weights cannot be trained"):
        load_config(None, BASE + ["--precision.policy_dtype=fp16"])
    with pytest.raises(ConfigError, match=r"precision.reference_dtype 'bf16': with LoRA"):
        load_config(None, BASE + ["--policy.lora_r=4", "--precision.reference_dtype=bf16"])
    with pytest.raises(ConfigError, match=r"precision.attn_implementation must be one of"):
        load_config(None, BASE + ["--precision.attn_implementation=flash"])


def test_memory_estimate_arithmetic_on_a_llama_of_known_size():
    from transformers import LlamaConfig, LlamaForCausalLM

    V, H, I, L, heads, kv_heads = 1000, 64, 256, 3, 4, 2
    config = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    kv = H // heads * kv_heads
    per_layer = H * H + 2 * H * kv + H * H + 3 * H * I + 2 * H  # q, k, v, o; gate, up, down; two RMSNorms
    n = V * H + L * per_layer + H + V * H  # embeddings, layers, final norm, untied LM head
    size = memory.ModelSize.of(model)
    assert size.total == size.trainable == n
    cfg = load_config(None, BASE + ["--precision.policy_dtype=bf16", "--precision.critic_dtype=fp32",
                             "--rollout.batch_size=4", "--rollout.max_prompt_tokens=10", "--rollout.max_new_tokens=6",
                             "--algo.mini_batch_size=4", "--algo.grad_accum=2"])
    critic = memory.ModelSize(n - V * H + H + 1, n - V * H + H + 1)  # trunk + value head
    est = memory.estimate(cfg, size, critic, [memory.ModelSize(5000)], V, processes=2, sharded=True)
    rows = {what: b for what, _, b in est.rows}
    assert rows["policy weights"] == n * 2 / 2  # bf16, halved by 2 shards
    assert rows["reference weights"] == n * 4  # fp32, a full copy on every process
    assert rows["policy AdamW"] == 2 * n * 2 / 2
    assert rows["critic weights"] == critic.total * 4 / 2 and rows["critic AdamW"] == 2 * critic.total * 4 / 2
    assert rows["reward model"] == 5000 * 4
    assert rows["rollout logits"] == 2 * 4 * 16 * V * 4 and rows["update logits"] == 3 * 2 * 16 * V * 4
    assert est.total == sum(rows.values())
    lora = load_config(None, BASE + ["--policy.lora_r=8"])
    assert "reference weights" not in {w for w, _, _ in memory.estimate(lora, size, None, [], V).rows}


def tiny_llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                        eos_token_id=tok.eos_token_id, bos_token_id=None)).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_gradient_checkpointing_leaves_generation_unchanged(arch):
    """Checkpointed layers are in training mode only while autograd records: sampling (no_grad, KV cache) is the
    same as without checkpointing. (With transformers 5.17 a Llama layer left in training mode drops its KV cache
    during generate and the tokens differ; this test caught that.)"""
    tok, policy, _ = toy_models()
    if arch == "llama":
        policy = tiny_llama(tok)
    prompt = tok(["the movie was", "the plot"], return_tensors="pt", padding=True)
    checkpointed = copy.deepcopy(policy)
    enable_gradient_checkpointing(checkpointed)
    layer = checkpointed.model.layers[0] if arch == "llama" else checkpointed.transformer.h[0]
    attn = layer.self_attn if arch == "llama" else layer.attn
    with torch.no_grad():
        assert not layer.training
        plain = policy.generate(**prompt, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        again = checkpointed.generate(**prompt, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(plain, again)
    assert layer.training  # grad enabled here
    checkpointed.eval()
    assert layer.training and not attn.training  # eval() keeps the rule; sub-modules stay in eval
    checkpointed.train()
    with torch.no_grad():
        assert layer.training  # an explicit train() is honoured


def test_gpu_check_script_runs_on_cpu_with_tiny(fresh_accelerate_state, tmp_path, capsys):
    """bench/gpu_check.py --tiny: the GPU check's code path (a Llama saved and loaded in bf16, checkpointing,
    autocast, our Trainer, a checkpoint save) on CPU."""
    import sys

    sys.path.insert(0, "bench")
    try:
        import gpu_check
    finally:
        sys.path.remove("bench")
    result = gpu_check.main(["--tiny", "--steps=2", "--batch=4", "--new-tokens=8", f"--out={tmp_path}"])
    printed = capsys.readouterr().out
    assert "memory estimate per process" in printed and "s per step" in printed
    trainer = result["trainer"]
    assert [row["step"] for row in trainer["losses"]] == [1, 2] and trainer["estimate_gb"] > 0
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors").is_file()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors"), "pt") as f:
        assert f.get_tensor(f.keys()[0]).dtype == torch.bfloat16  # the policy trained in bf16
    for key, value in result["bf16_vs_fp32"]["fp32"].items():
        low = result["bf16_vs_fp32"]["bf16"][key]
        assert abs(low - value) <= BF16_REL_TOL * abs(value) + BF16_ABS_TOL, (key, low, value)
