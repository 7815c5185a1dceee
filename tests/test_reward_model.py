"""Bradley-Terry reward-model training on a tiny model: it must learn a planted preference."""

import itertools
import json
import math

import pytest
import torch

from red_rlhf.training.reward_model import (
    PreferencePair, bradley_terry_loss, divergence_mask, read_pairs, train_reward_model,
)
from red_rlhf.models.tiny import tiny_reward_model, tiny_tokenizer

GOOD = ["great", "good", "wonderful", "delightful", "clever", "funny"]
BAD = ["bad", "dull", "terrible", "slow", "cold", "dirty"]
SUBJECTS = ["The movie was", "The acting was", "The music is", "The plot was", "The food was", "The room was"]


def planted_pairs():
    pairs = [PreferencePair("Review: ", f"{s} {g}.", f"{s} {b}.") for s, g, b in itertools.product(SUBJECTS, GOOD, BAD)]
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(pairs), generator=g).tolist()
    return [pairs[i] for i in order]


def test_loss_and_divergence_mask():
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
    assert bradley_terry_loss(torch.tensor([5.0]), torch.tensor([0.0])).item() < 0.01
    c = torch.tensor([[1, 2, 3, 4, 0], [1, 2, 9, 0, 0]])
    r = torch.tensor([[1, 2, 5, 6, 7], [1, 2, 3, 4, 0]])
    mask = divergence_mask(c, (c != 0).long(), r, (r != 0).long())
    assert mask.tolist() == [[False, False, True, True, False], [False, False, True, False, False]]


@pytest.mark.parametrize("all_positions", [False, True])
def test_tiny_reward_model_learns_a_planted_preference(all_positions):
    tok = tiny_tokenizer("gpt2")
    model = tiny_reward_model("gpt2", len(tok), pad_token_id=tok.pad_token_id, seed=11, width=64)
    pairs = planted_pairs()
    train, held_out = pairs[:160], pairs[160:]
    # no held-out pair's exact texts were seen in training
    assert not {(p.chosen, p.rejected) for p in held_out} & {(p.chosen, p.rejected) for p in train}
    result = train_reward_model(model, tok, train, held_out, epochs=3, lr=3e-3, batch_size=16,
                                all_positions=all_positions, seed=0)
    assert result["accuracy_after"] >= 0.9, result
    assert result["accuracy_after"] > result["accuracy_before"] + 0.2, result


@pytest.mark.parametrize("all_positions", [False, True])
def test_score_head_alone_learns_a_planted_preference_and_folds_into_the_model(all_positions):
    from red_rlhf.training.reward_model import pairwise_accuracy, train_score_head

    tok = tiny_tokenizer("gpt2")
    model = tiny_reward_model("llama", len(tok), pad_token_id=tok.pad_token_id, seed=3, width=64)
    trunk_before = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    pairs = planted_pairs()
    train, held_out = pairs[:160], pairs[160:]
    result = train_score_head(model, tok, train, held_out, all_positions=all_positions)
    assert result["accuracy_after"] >= 0.9, result
    assert result["accuracy_after"] > result["accuracy_before"] + 0.2, result
    # the folded head scores the model's own pass exactly as the fitted features did; the trunk is untouched
    assert pairwise_accuracy(model, tok, held_out, max_length=64) == pytest.approx(result["accuracy_after"])
    assert all(torch.equal(v, model.base_model.state_dict()[k]) for k, v in trunk_before.items())


def test_keep_first_layers_cuts_the_trunk_and_saves_as_an_hf_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from red_rlhf.training.reward_model import keep_first_layers
    from red_rlhf.models.prefix import causal_scores

    tok = tiny_tokenizer("gpt2")
    for arch in ("llama", "gpt2"):
        model = tiny_reward_model(arch, len(tok), pad_token_id=tok.pad_token_id, layers=3)
        keep_first_layers(model, 2)
        model.save_pretrained(tmp_path / arch)
        loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / arch).eval()
        ids = torch.tensor([tok("The movie was great.").input_ids])
        assert torch.allclose(causal_scores(loaded, ids, torch.ones_like(ids)), causal_scores(model, ids, torch.ones_like(ids)))
        blocks = loaded.base_model.layers if arch == "llama" else loaded.base_model.h
        assert len(blocks) == 2
        with pytest.raises(ValueError, match="has 2 blocks, cannot keep 3"):
            keep_first_layers(model, 3)


def test_read_pairs_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a", "chosen": " b", "rejected": " c"}) + "\n")
    assert read_pairs(f) == [PreferencePair("a", " b", " c")]
    f.write_text(json.dumps({"prompt": "a", "chosen": " b"}) + "\n")
    with pytest.raises(ValueError, match='needs string field\(s\) "prompt", "chosen", "rejected"'):
        read_pairs(f)
    f.write_text(json.dumps({"prompt": "a", "chosen": " ", "rejected": " c"}) + "\n")
    with pytest.raises(ValueError, match="empty chosen or rejected"):
        read_pairs(f)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_pairs(tmp_path / "none.jsonl")


def test_train_rm_cli_saves_a_model_red_can_score_with(tmp_path, capsys, finished_bars):
    from red_rlhf import HFRewardModel, TokenRewardScorer
    from red_rlhf.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.__dict__) + "\n" for p in planted_pairs()))
    out = tmp_path / "rm"
    assert main(["train-rm", "--data", str(data), "--output-dir", str(out), "--epochs", "3", "--lr", "3e-3",
                 "--batch-size", "16", "--held-out-fraction", "0.2"]) == 0
    [(_, done, total)] = finished_bars  # the progress bar ends full: one tick per optimiser step, 3 epochs x 11 batches
    assert done == total == 3 * 11
    metrics = json.loads((out / "rm_metrics.json").read_text())
    assert metrics["accuracy_after"] >= 0.9 and metrics["held_out_pairs"] == 43
    assert "held-out pairwise accuracy" in capsys.readouterr().out
    [row] = TokenRewardScorer(HFRewardModel.from_pretrained(str(out))).score(["Review: "], ["The movie was great."])
    assert sum(row.rewards) == pytest.approx(row.final_score - row.prompt_score, abs=1e-5)
    assert main(["train-rm", "--data", str(tmp_path / "none.jsonl"), "--output-dir", str(out)]) == 2
    # a bad size names the flag: more blocks than the model has
    assert main(["train-rm", "--data", str(data), "--output-dir", str(out), "--keep-layers", "9", "--head-only"]) == 2
    assert "--keep-layers: keep_first_layers: the model has 2 blocks, cannot keep 9" in capsys.readouterr().err
    head = tmp_path / "head"
    assert main(["train-rm", "--data", str(data), "--output-dir", str(head), "--head-only", "--keep-layers", "1",
                 "--held-out-fraction", "0.2"]) == 0
    assert json.loads((head / "rm_metrics.json").read_text())["accuracy_after"] >= 0.9
    (_, done, total) = finished_bars[-1]  # features, then the head's iterations: the bar ends full, not short or over
    assert done == total > 400


def test_train_only_last_layers_freezes_the_rest():
    from red_rlhf.training.reward_model import train_only_last_layers

    tok = tiny_tokenizer("gpt2")
    model = tiny_reward_model("llama", len(tok), pad_token_id=tok.pad_token_id, layers=3)
    train_only_last_layers(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.2.", "model.norm", "score")) for n in trainable)
    assert any(n.startswith("score") for n in trainable)


def test_load_backbone_puts_a_score_head_on_a_saved_decoder(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from red_rlhf.training.reward_model import load_backbone
    from red_rlhf.models.prefix import detect_mode

    tok = tiny_tokenizer("gpt2")
    tok.pad_token = None  # a decoder tokenizer without a pad token, as many have
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    model, loaded_tok = load_backbone(str(tmp_path / "lm"))
    assert detect_mode(model) == "causal" and model.config.num_labels == 1
    assert loaded_tok.pad_token_id == loaded_tok.eos_token_id == model.config.pad_token_id


def test_a_trained_reward_model_is_scored_the_way_it_was_trained(tmp_path):
    """train-rm trains on plain concatenations; its saved config says so, and HFRewardModel's format 'auto' reads
    it even when the tokenizer has a chat template (which it would otherwise pick)."""
    from red_rlhf import HFRewardModel
    from red_rlhf.training.reward_model import save_reward_model

    tok = tiny_tokenizer("gpt2", chat=True)
    model = tiny_reward_model("gpt2", len(tok), pad_token_id=tok.pad_token_id, seed=3)
    assert HFRewardModel(model, tok).format == "chat"  # nothing recorded: the template is the default
    out = save_reward_model(model, tok, tmp_path / "rm", {"accuracy_after": 0.5})
    loaded = HFRewardModel.from_pretrained(str(out))
    assert loaded.format == "concat" and loaded.reads_policy_tokens(tok)
    assert HFRewardModel.from_pretrained(str(out), format="chat").format == "chat"  # an explicit choice wins
