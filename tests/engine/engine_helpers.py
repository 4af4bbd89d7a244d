"""Tiny models, event collection and reference decoders shared by the engine tests.

The models are real transformers classes (GPT-2 with a byte-level BPE tokenizer, Llama
with a sentencepiece-style byte-fallback BPE tokenizer) built from configs with large
initializer ranges, so that greedy outputs vary from prompt to prompt and batching or
cache bugs cannot hide behind a model that repeats one token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from modelwire_server.engine import (
    Delta,
    Event,
    Failed,
    Finished,
    GenerationEngine,
    GenerationRequest,
    PromptInfo,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thanks.",
    "Streaming tokens from a model server is fun and fast.",
    "Once upon a time there was a tiny model that wrote stories.",
    "def main():\n    return 42\n",
    "naïve café résumé über straße",
    "数据 模型 服务器 你好 世界",
    "🙂 emoji 🚀 rocket 👍 thumbs",
] * 20

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog and then",
    "Once",
    "数据 模型 🙂 café",
    "def main():",
    "Streaming tokens from a model",
]


@dataclass
class Bundle:
    """A model with its tokenizer and generation config, as the server would load them."""

    name: str
    model: Any
    tokenizer: Any
    generation_config: GenerationConfig

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eot, bos_token=eot, unk_token=eot
    )


def byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-2 style: ``▁`` word marks, ``<0xNN>`` byte tokens for anything unknown."""
    tok = _byte_fallback_backend()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _byte_fallback_backend(specials: tuple[str, ...] = ("<unk>", "<s>", "</s>")) -> Tokenizer:
    """The trained backend; ``specials`` take the first ids, in order."""
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = metaspace
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(specials), show_progress=False
    )
    trained.train_from_iterator(CORPUS, trainer)
    learned = json.loads(trained.to_str())["model"]
    vocab = {token: i for i, token in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})
    for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) for m in learned["merges"]]
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = metaspace
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(list(specials))
    return tok


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        clean_up_tokenization_spaces=True,
    )


def tiny_gpt2() -> Bundle:
    tok = byte_level_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=4,
        initializer_range=0.6,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    gc = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return Bundle("gpt2", model, tok, gc)


def tiny_llama() -> Bundle:
    tok = byte_fallback_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    gc = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=0)
    return Bundle("llama", model, tok, gc)


def make_engine(bundle: Bundle, **overrides: Any) -> GenerationEngine:
    settings: dict[str, Any] = {
        "device": "cpu",
        "generation_config": bundle.generation_config,
        "max_batch_tokens": 8192,
        "max_waiting": 64,
        "max_new_tokens_cap": 200,
        "default_max_new_tokens": 16,
    }
    settings.update(overrides)
    return GenerationEngine(bundle.model, bundle.tokenizer, **settings)


@dataclass
class Collector:
    """A sink that records every event of one request."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def deltas(self, index: int = 0) -> list[Delta]:
        return [e for e in self.events if isinstance(e, Delta) and e.index == index]

    def tokens(self, index: int = 0) -> list[int]:
        return [t.id for d in self.deltas(index) for t in d.tokens]

    def text(self, index: int = 0) -> str:
        return "".join(d.text for d in self.deltas(index))

    def finished(self, index: int = 0) -> Finished:
        found = [e for e in self.events if isinstance(e, Finished) and e.index == index]
        assert len(found) == 1, self.events
        return found[0]

    def all_finished(self) -> list[Finished]:
        return [e for e in self.events if isinstance(e, Finished)]

    @property
    def failed(self) -> Failed | None:
        found = [e for e in self.events if isinstance(e, Failed)]
        return found[0] if found else None

    @property
    def prompt_info(self) -> PromptInfo:
        assert isinstance(self.events[0], PromptInfo), self.events[:1]
        return self.events[0]


def submit(engine: GenerationEngine, prompt: list[int], **fields: Any) -> Collector:
    sink = Collector()
    engine.submit(GenerationRequest(prompt_ids=prompt, **fields), sink)
    return sink


def run_until_idle(engine: GenerationEngine, max_steps: int = 1000) -> int:
    steps = 0
    while engine.has_work():
        engine.step()
        steps += 1
        assert steps <= max_steps, "the engine did not finish"
    return steps


def reference_greedy(bundle: Bundle, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy decoding, with no EOS so that lengths are fixed."""
    out = bundle.model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        pad_token_id=bundle.generation_config.pad_token_id,
        eos_token_id=bundle.generation_config.eos_token_id,
    )
    return out[0, len(prompt) :].tolist()


def expected_text(bundle: Bundle, prompt: list[int], output: list[int], skip: bool = True) -> str:
    decode = bundle.tokenizer.decode
    full = decode(prompt + output, skip_special_tokens=skip)
    return full[len(decode(prompt, skip_special_tokens=skip)) :]


def distinct_ratio(tokens: list[int]) -> float:
    return len(set(tokens)) / max(1, len(tokens))
