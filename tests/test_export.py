"""Exported policies and reward models: standard HF folders that load alone, cards, generation config, hub push."""

import json

import pytest
import torch

from red_rlhf.config import ConfigError, load_config
from red_rlhf.training.trainer import Trainer


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records the calls a push makes, touches no network."""

    calls: list = []

    def create_repo(self, **kwargs):
        FakeHub.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        FakeHub.calls.append(("upload_folder", kwargs))
        return "https://hub.example/commit"


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    return FakeHub.calls


def toy(tmp_path, *overrides):
    return load_config("configs/toy.yaml", ["--train.steps=2", "--train.eval_every=0", "--data.eval_size=4",
                                            "--train.save_every=0", "--rollout.batch_size=8", "--train.log_with=",
                                            f"--train.output_dir={tmp_path / 'run'}", *overrides])


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_policy_folder_loads_alone_with_card_and_generation_config(tmp_path, fake_hub):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    trainer = Trainer(toy(tmp_path, "--rollout.temperature=0.7", "--rollout.top_p=0.9"))
    history = trainer.train()
    folder = tmp_path / "run" / "policy"
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok("the movie was good").input_ids])
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(folder), ids), logits(trainer.policy, ids))
    gen = GenerationConfig.from_pretrained(folder)
    assert (gen.do_sample, gen.temperature, gen.top_p, gen.max_new_tokens) == (True, 0.7, 0.9, 12)
    assert gen.eos_token_id == tok.eos_token_id and gen.pad_token_id == tok.pad_token_id
    card = (folder / "README.md").read_text()
    assert "library_name: transformers" in card and "base_model" not in card  # the toy model has no hub id
    assert "PPO, 2 steps" in card and "| reward | reward | `red_rlhf.data.toy:target_fraction` | red | 1 |" in card
    assert f"mean reward {history[-1]['eval_reward_mean']:+.4f}" in card  # the final held-out numbers
    assert f"KL to the reference {history[-1]['eval_kl']:.4f}" in card
    assert fake_hub == [] and not (tmp_path / "run" / "policy-merged").exists()  # no push, no merge unless asked


def test_lora_adapters_and_merged_model_load_alone_and_push(tmp_path, fake_hub):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from red_rlhf.models.tiny import toy_policy, toy_tokenizer

    tok = toy_tokenizer()
    base = tmp_path / "base"
    toy_policy(tok).save_pretrained(base)
    tok.save_pretrained(base)
    trainer = Trainer(toy(tmp_path, f"--policy.name_or_path={base}", "--policy.lora_r=4",
                          "--policy.lora_target_modules=c_attn", "--train.merge_lora=true",
                          "--train.push_to_hub=someone/red-policy", "--algo.policy_lr=0.05"))
    trainer.train()
    run = tmp_path / "run"
    ids = torch.tensor([tok("the movie was good").input_ids])
    trained = logits(trainer.policy, ids)
    assert not torch.allclose(trained, logits(AutoModelForCausalLM.from_pretrained(base), ids))  # training moved it
    adapters = AutoPeftModelForCausalLM.from_pretrained(run / "policy")  # base from the adapter config + adapters
    torch.testing.assert_close(logits(adapters, ids), trained)
    merged = AutoModelForCausalLM.from_pretrained(run / "policy-merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, ids), trained, atol=1e-5, rtol=1e-4)
    assert any("lora_" in name for name, _ in trainer.policy.named_parameters())  # the trainer's copy keeps adapters
    assert "library_name: peft" in (run / "policy" / "README.md").read_text()
    assert "LoRA adapters (r=4) merged in" in (run / "policy-merged" / "README.md").read_text()
    assert [name for name, _ in fake_hub] == ["create_repo", "upload_folder"]
    assert fake_hub[0][1] == {"repo_id": "someone/red-policy", "repo_type": "model", "exist_ok": True}
    upload = fake_hub[1][1]
    assert (upload["folder_path"], upload["repo_id"], upload["repo_type"]) == \
        (str(run / "policy-merged"), "someone/red-policy", "model")


def test_export_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.merge_lora merges LoRA adapters, but policy.lora_r is 0"):
        toy(tmp_path, "--train.merge_lora=true")
    with pytest.raises(ConfigError, match="train.push_to_hub must be a hub repo id 'user/name', got 'policy'"):
        toy(tmp_path, "--train.push_to_hub=policy")


def test_train_rm_folder_loads_in_transformers_alone_and_in_red_rlhf_score(tmp_path, capsys, fake_hub):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from red_rlhf.cli import main
    from tests.test_reward_model import planted_pairs

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.__dict__) + "\n" for p in planted_pairs()))
    out = tmp_path / "rm"
    assert main(["train-rm", "--data", str(data), "--output-dir", str(out), "--head-only", "--held-out-fraction",
                 "0.2", "--push-to-hub", "someone/red-rm"]) == 0
    assert main(["train-rm", "--data", str(data), "--output-dir", str(out), "--push-to-hub", "red-rm"]) == 2
    assert "--push-to-hub must be a hub repo id 'user/name', got 'red-rm'" in capsys.readouterr().err
    metrics = json.loads((out / "rm_metrics.json").read_text())
    card = (out / "README.md").read_text()
    assert f"{metrics['accuracy_before']:.3f} before training, {metrics['accuracy_after']:.3f}" in card
    assert "score head alone on frozen features" in card and "pipeline_tag: text-classification" in card
    prompt, responses = "Review: ", ["The movie was great.", "A bad, dull film."]
    model = AutoModelForSequenceClassification.from_pretrained(out)  # transformers alone, no red-rlhf code
    tok = AutoTokenizer.from_pretrained(out)
    batch = tok([prompt + r for r in responses], return_tensors="pt", padding=True)
    with torch.no_grad():
        alone = model(**batch).logits[:, 0].tolist()  # a padded batch: needs the saved pad id
    scored = tmp_path / "scored.jsonl"
    for response in responses:
        assert main(["score", "--reward-model", str(out), "--prompt", prompt, "--response", response,
                     "--json", str(scored)]) == 0
        [row] = [json.loads(line) for line in scored.read_text().splitlines()]
        assert row["final_score"] == pytest.approx(alone[responses.index(response)], abs=1e-4)
    assert fake_hub[1][1]["folder_path"] == str(out) and fake_hub[1][1]["repo_id"] == "someone/red-rm"
