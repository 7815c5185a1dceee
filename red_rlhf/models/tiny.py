"""Tiny tokenizers and reward models built from configs, for tests and the offline smoke run.

Nothing here touches a model hub: tokenizers are trained in a fraction of a second on a small built-in
corpus, models are randomly initialised from small configs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from red_rlhf.data.toy import WORDS

CORPUS = [
    "The movie was good and the acting was great.",
    "A bad film with terrible acting and a dull plot.",
    "I loved every minute of it; the music is wonderful!",
    "Hello world, how are you today? I am fine, thank you.",
    "The food was cold, the service slow, and the room dirty.",
    "What a delightful surprise: funny, warm and clever.",
    "Please explain how a transformer reads a sentence.",
    "It rains in the city while the children play in the park.",
]

# A chat template in the common ChatML shape: the score is read after the end-of-turn token.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


ARCHITECTURES = ("gpt2", "llama", "bert")


def tiny_tokenizer(
    style: str = "gpt2", *, vocab_size: int = 400, pad_equals_eos: bool = False, chat: bool = False
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on CORPUS.

    style "gpt2": no special tokens added when encoding; "bert": [CLS] text [SEP] and pairs
    [CLS] a [SEP] b [SEP]; "llama": a BOS token before the text; "sentencepiece": a BOS token and SentencePiece's
    word marker instead of byte-level BPE (Llama-2 style: the decoder drops the space before a text's first word,
    so decoding rewrites spaces). pad_equals_eos makes pad id == eos id. chat adds ChatML tokens and template.
    """
    specials = ["<|endoftext|>", "<pad>", "[CLS]", "[SEP]", "<s>"] + (["<|im_start|>", "<|im_end|>"] if chat else [])
    if style == "sentencepiece":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + ["<unk>"], show_progress=False)
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    tok.train_from_iterator(CORPUS * 4, trainer)
    cls_id, sep_id, bos_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), tok.token_to_id("<s>")
    if style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
        )
    elif style in ("llama", "sentencepiece"):
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", bos_id)])
    elif style != "gpt2":
        raise ValueError(f"style must be 'gpt2', 'bert', 'llama' or 'sentencepiece', got {style!r}")
    extra = {}
    if style == "bert":
        extra = {"cls_token": "[CLS]", "sep_token": "[SEP]", "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}
    if style in ("llama", "sentencepiece"):
        extra["bos_token"] = "<s>"
    if style == "sentencepiece":
        extra["unk_token"] = "<unk>"
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>" if pad_equals_eos else "<pad>",
        **extra,
    )
    if chat:
        wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def tiny_reward_model(arch: str, vocab_size: int, *, pad_token_id: int, seed: int = 0, layers: int = 2,
                      width: int = 32, heads: int = 2, context: int = 256) -> torch.nn.Module:
    """A randomly initialised reward model (num_labels = 1) of the given architecture, in eval mode."""
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=width, n_layer=layers, n_head=heads, n_positions=context,
                            num_labels=1, pad_token_id=pad_token_id, bos_token_id=None, eos_token_id=None)
        model = GPT2ForSequenceClassification(config)
    elif arch == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=context,
                             num_labels=1, pad_token_id=pad_token_id, bos_token_id=None, eos_token_id=None)
        model = LlamaForSequenceClassification(config)
    elif arch == "bert":
        config = BertConfig(vocab_size=vocab_size, hidden_size=width, initializer_range=0.1, intermediate_size=2 * width, num_hidden_layers=layers,
                            num_attention_heads=heads, max_position_embeddings=context, num_labels=1,
                            pad_token_id=pad_token_id)
        model = BertForSequenceClassification(config)
    else:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    # Random score heads are near zero; scale them so prefix scores differ visibly between tokens.
    head = model.classifier if arch == "bert" else model.score
    with torch.no_grad():
        head.weight.mul_(20.0)
    return model.eval()


def save_tiny_reward_model(out_dir: str | Path, *, arch: str = "gpt2", seed: int = 0) -> Path:
    """Build a tiny reward model and its tokenizer and save both to out_dir (loadable by from_pretrained)."""
    out = Path(out_dir)
    style = {"gpt2": "gpt2", "llama": "llama", "bert": "bert"}[arch]
    tokenizer = tiny_tokenizer(style, chat=False)
    model = tiny_reward_model(arch, len(tokenizer), pad_token_id=tokenizer.pad_token_id, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def toy_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_causal_lm(tokenizer, *, width: int = 64, layers: int = 2, heads: int = 2, context: int = 128,
                   seed: int = 0) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 language model over `tokenizer` (EOS doubles as BOS), for tests and smoke runs."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=width, n_layer=layers, n_head=heads, n_positions=context,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config)


def toy_policy(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> GPT2LMHeadModel:
    """The toy task's policy: a 2-layer GPT-2 over the toy vocabulary."""
    return tiny_causal_lm(tokenizer, seed=seed)
