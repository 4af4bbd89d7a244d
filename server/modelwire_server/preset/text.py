"""Text models of the ``tiny`` preset: small random-weight models of real classes.

Every builder trains a tokenizer on the built-in corpus (``preset.corpus``), builds a
model from a config with a fixed seed, and saves both with ``save_pretrained``
(safetensors), so ``AutoTokenizer`` / ``AutoModel*`` reload them offline.

Weights use a large init (``initializer_range`` 0.2-0.3 instead of 0.02): with the
default init a random model gives every input nearly the same scores and a decoder
repeats one token, which would hide batching and decoding bugs that only show when
outputs vary. The encoder-decoders need more than that (see the constants below): T5
uses its v1.1 gated-GELU FFN and position-driven decoder self-attention, M2M100 a tanh
FFN and an untied output layer, and every decoder's seed was chosen so that greedy
decoding of varied prompts rarely loops.

Builders take ``**config_overrides`` so a benchmark can build a full-size model "like the
preset" (e.g. ``build_gpt2(path, n_layer=12, n_embd=768, n_head=12, vocab_size=50257)``);
a generative model's tokenizer then grows to the requested vocabulary size so that every
id the model can emit decodes.

Tokenizers are saved as transformers' generic fast tokenizer (``TokenizersBackend``):
transformers 5's model-specific tokenizer classes rebuild their own pipeline and would
not load these vocabularies (``T5Tokenizer`` is a Unigram model, for one).

Translation (``tiny-m2m100``): ``M2M100Tokenizer`` is a slow tokenizer that needs a
SentencePiece ``.model`` file and the ``sentencepiece`` package, neither of which is
available offline here, and there is no fast M2M100 tokenizer class. So the model ships
a fast tokenizer whose language tokens (``__en__``, ``__fr__``, ``__de__``, ``__es__``)
are special tokens, plus ``modelwire_languages.json`` mapping language codes to them
(``{"en": "__en__", ...}``). The M2M100 convention applies: the source is encoded as
``[__src__] text </s>`` (the tokenizer appends ``</s>``; the caller prepends the
source token id) and generation starts from ``decoder_start_token_id`` (``</s>``) with
the target language token forced as the first generated token (``forced_bos_token_id``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    M2M100Config,
    M2M100ForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from modelwire_server.preset import PresetModel
from modelwire_server.preset.corpus import (
    pad_vocabulary,
    set_template,
    train_byte_level_bpe,
    train_sentencepiece_bpe,
    train_wordpiece,
)

# BERT heads read one pooled or normalized vector, so they need a larger init than the
# decoders. With 0.4 and this seed, over a handful of varied texts, every label's score
# moves by >= 0.15, the MLM's top fill has probability ~0.2 (not ~1/vocab) and NER tags
# differ between sentences; other seeds left some head nearly constant.
BERT_SEED = 2
BERT_INIT_RANGE = 0.4
# Random decoders easily fall into a one- or two-token loop under greedy decoding. The
# settings and seeds below were picked by generating 16 tokens for ~50 varied prompts
# and counting the outputs with fewer than 8 distinct tokens: 0 for each model (other
# seeds and init scales: 10-40% of prompts).
LLAMA_SEED = 0
LLAMA_INIT_RANGE = 0.2
GPT2_SEED = 2
GPT2_INIT_RANGE = 0.3
T5_SEED = 0
T5_INIT_FACTOR = 4.0
# T5 has no absolute positions: see _position_driven_self_attention.
T5_QUERY_SCALE = 0.03
T5_RELATIVE_BIAS_SCALE = 20.0
M2M100_SEED = 0
M2M100_INIT_STD = 0.1
VOCAB_SIZE = 1000

SENTIMENT_LABELS = ["NEGATIVE", "POSITIVE"]
MULTILABEL_LABELS = ["joy", "anger", "fear", "surprise"]
# Zero-shot pipelines look up the label whose name starts with "entail".
NLI_LABELS = ["contradiction", "neutral", "entailment"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
LANGUAGES = {"en": "__en__", "fr": "__fr__", "de": "__de__", "es": "__es__"}
LANGUAGES_FILE = "modelwire_languages.json"
EMBED_MAX_SEQ_LENGTH = 48
# Short enough that texts beyond it are easy to write, so windowing paths get exercised.
SHORT_POSITIONS = 64
EOT = "<|eot|>"

# Chat templates: each turn is "<|role|>\n" + its text; content may be a plain string or a
# list of parts ({"type": "text", "text": ...}), of which only text parts are rendered.
# The templates are single lines without whitespace control ("{%-"), which would also
# eat the newlines that belong to the format.
_CONTENT = (
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)
GPT2_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n" + _CONTENT + "{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n" + _CONTENT + EOT + "\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


# ---------------------------------------------------------------------------- helpers


def _labels(names: list[str]) -> dict[str, Any]:
    return {
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
    }


def _save(
    path: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    generation: GenerationConfig | None = None,
) -> None:
    if generation is not None:
        model.generation_config = generation
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _padded(
    tokenizer: PreTrainedTokenizerFast, config_overrides: dict[str, Any]
) -> PreTrainedTokenizerFast:
    """Grow a generative model's tokenizer to an overridden ``vocab_size``.

    A benchmark building e.g. GPT-2-small's shape asks for 50257 ids; every id the model
    may generate must then decode. (Encoders never emit ids, so BERT needs no padding.)
    """
    return pad_vocabulary(tokenizer, int(config_overrides.get("vocab_size", 0)))


def _bert_config(tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> BertConfig:
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "initializer_range": BERT_INIT_RANGE,
        "pad_token_id": tokenizer.pad_token_id,
    }
    settings.update(overrides)
    return BertConfig(**settings)


def _build_bert(path: Path, model_class: type[PreTrainedModel], **overrides: Any) -> None:
    tokenizer = train_wordpiece(VOCAB_SIZE)
    torch.manual_seed(BERT_SEED)
    model = model_class(_bert_config(tokenizer, **overrides)).eval()
    # The tokenizer's limit follows the positions the model has, as in real checkpoints.
    tokenizer.model_max_length = model.config.max_position_embeddings
    _save(path, model, tokenizer)


# ------------------------------------------------------------------------- encoders


def build_bert_classifier(path: Path, **config_overrides: Any) -> None:
    """BertForSequenceClassification, NEGATIVE/POSITIVE unless labels are overridden."""
    settings = {**_labels(SENTIMENT_LABELS), **config_overrides}
    _build_bert(path, BertForSequenceClassification, **settings)


def build_multilabel(path: Path, **config_overrides: Any) -> None:
    """Four independent labels: the server must use a sigmoid, not a softmax."""
    settings = {**_labels(MULTILABEL_LABELS), "problem_type": "multi_label_classification"}
    build_bert_classifier(path, **{**settings, **config_overrides})


def build_nli(path: Path, **config_overrides: Any) -> None:
    """An NLI classifier for zero-shot classification."""
    build_bert_classifier(path, **{**_labels(NLI_LABELS), **config_overrides})


def build_fill_mask(path: Path, **config_overrides: Any) -> None:
    _build_bert(path, BertForMaskedLM, **config_overrides)


def build_ner(path: Path, **config_overrides: Any) -> None:
    settings = {**_labels(NER_LABELS), "max_position_embeddings": SHORT_POSITIONS}
    _build_bert(path, BertForTokenClassification, **{**settings, **config_overrides})


def build_qa(path: Path, **config_overrides: Any) -> None:
    settings = {"max_position_embeddings": SHORT_POSITIONS, **config_overrides}
    _build_bert(path, BertForQuestionAnswering, **settings)


def build_embedder(path: Path, **config_overrides: Any) -> None:
    """BertModel plus the sentence-transformers files (mean pooling, max_seq_length 48)."""
    _build_bert(path, BertModel, **config_overrides)
    hidden = BertConfig.from_pretrained(path).hidden_size
    write_sentence_transformers_files(path, hidden, EMBED_MAX_SEQ_LENGTH)


def write_sentence_transformers_files(path: Path, hidden_size: int, max_seq_length: int) -> None:
    """Transformer + mean Pooling modules, the layout ``SentenceTransformer(path)`` reads."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    pooling = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    _write_json(path / "modules.json", modules)
    _write_json(path / "1_Pooling" / "config.json", pooling)
    _write_json(
        path / "sentence_bert_config.json",
        {"max_seq_length": max_seq_length, "do_lower_case": False},
    )


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------- decoders


def build_gpt2(path: Path, **config_overrides: Any) -> None:
    """GPT2LMHeadModel with a byte-level BPE tokenizer and a chat template."""
    tokenizer = _padded(train_byte_level_bpe(VOCAB_SIZE), config_overrides)
    tokenizer.chat_template = GPT2_CHAT_TEMPLATE
    eos = tokenizer.eos_token_id
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 2,
        "n_positions": 256,
        "initializer_range": GPT2_INIT_RANGE,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": eos,
    }
    torch.manual_seed(GPT2_SEED)
    model = GPT2LMHeadModel(GPT2Config(**{**settings, **config_overrides})).eval()
    tokenizer.model_max_length = model.config.n_positions
    # GPT-2 has no pad token; generation pads with EOS, as transformers does for GPT-2.
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos, do_sample=False
    )
    _save(path, model, tokenizer, generation)


def _llama_tokenizer(config_overrides: dict[str, Any]) -> PreTrainedTokenizerFast:
    tokenizer = _padded(train_sentencepiece_bpe(VOCAB_SIZE, extra_special=[EOT]), config_overrides)
    # Llama prepends <s> to every prompt and appends nothing.
    set_template(tokenizer, bos=tokenizer.bos_token)
    tokenizer.chat_template = LLAMA_CHAT_TEMPLATE
    return tokenizer


def build_llama(path: Path, **config_overrides: Any) -> None:
    """LlamaForCausalLM (grouped-query attention) that stops on ``</s>`` or ``<|eot|>``."""
    tokenizer = _llama_tokenizer(config_overrides)
    eos_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(EOT)]
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "initializer_range": LLAMA_INIT_RANGE,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": eos_ids,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    torch.manual_seed(LLAMA_SEED)
    model = LlamaForCausalLM(LlamaConfig(**{**settings, **config_overrides})).eval()
    tokenizer.model_max_length = model.config.max_position_embeddings
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    _save(path, model, tokenizer, generation)


# ---------------------------------------------------------------- encoder-decoders


def build_t5(path: Path, **config_overrides: Any) -> None:
    """T5ForConditionalGeneration: pad 0 doubles as the decoder start, ``</s>`` ends."""
    tokenizer = _padded(train_sentencepiece_bpe(VOCAB_SIZE), config_overrides)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "d_model": 64,
        "d_kv": 16,
        "d_ff": 128,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        # T5 v1.1's gated FFN: a ReLU FFN adds the same positive-mean vector at every
        # step, which pulls every decoder state towards the same few tokens.
        "feed_forward_proj": "gated-gelu",
        # T5 scales its init by this factor rather than using initializer_range.
        "initializer_factor": T5_INIT_FACTOR,
        "pad_token_id": pad,
        "eos_token_id": eos,
        "decoder_start_token_id": pad,
    }
    torch.manual_seed(T5_SEED)
    model = T5ForConditionalGeneration(T5Config(**{**settings, **config_overrides})).eval()
    _position_driven_self_attention(model)
    with torch.no_grad():
        # Logits ~50 apart make sampling the same as greedy; scaling the last norm by 0.1
        # brings them to ~5 like the other decoders, without changing any argmax.
        model.decoder.final_layer_norm.weight.mul_(0.1)
    tokenizer.model_max_length = 512
    generation = GenerationConfig(
        decoder_start_token_id=pad, eos_token_id=eos, pad_token_id=pad, do_sample=False
    )
    _save(path, model, tokenizer, generation)


def build_m2m100(path: Path, **config_overrides: Any) -> None:
    """M2M100ForConditionalGeneration with ``__xx__`` language tokens (see module doc)."""
    languages = list(LANGUAGES.values())
    tokenizer = _padded(
        train_sentencepiece_bpe(VOCAB_SIZE, extra_special=languages), config_overrides
    )
    pad, eos, bos = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "d_model": 64,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "max_position_embeddings": 256,
        "init_std": M2M100_INIT_STD,
        # tanh instead of ReLU: a ReLU's positive mean adds the same vector at every
        # decoder step and greedy decoding then locks onto one token.
        "activation_function": "tanh",
        # Untied: with a shared output matrix a random decoder mostly predicts the token
        # it was just fed (its own embedding dominates the final state) and loops on it.
        "tie_word_embeddings": False,
        "pad_token_id": pad,
        "bos_token_id": bos,
        "eos_token_id": eos,
        # M2M100 starts decoding from </s>, then the forced target-language token.
        "decoder_start_token_id": eos,
    }
    torch.manual_seed(M2M100_SEED)
    config = M2M100Config(**{**settings, **config_overrides})
    model = M2M100ForConditionalGeneration(config).eval()
    tokenizer.model_max_length = config.max_position_embeddings
    generation = GenerationConfig(
        bos_token_id=bos,
        decoder_start_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
        do_sample=False,
    )
    _save(path, model, tokenizer, generation)
    _write_json(path / LANGUAGES_FILE, LANGUAGES)


def _position_driven_self_attention(model: T5ForConditionalGeneration) -> None:
    """Make the decoder's self-attention pick tokens by relative position, not content.

    With random weights, content-driven attention is nearly one-hot on the same token at
    every step, so the next token is a function of the current one and greedy decoding
    soon repeats a token forever. Shrinking the queries and scaling up the relative
    position bias (shared by all layers) makes each head read a fixed offset back: the
    next token then depends on the last few tokens, like an n-gram model, and loops are
    rare (none on ~55 varied prompts, against 5-20% before).
    """
    with torch.no_grad():
        for block in model.decoder.block:
            block.layer[0].SelfAttention.q.weight.mul_(T5_QUERY_SCALE)
        first = model.decoder.block[0].layer[0].SelfAttention
        first.relative_attention_bias.weight.mul_(T5_RELATIVE_BIAS_SCALE)


MODELS: list[PresetModel] = [
    PresetModel(
        "tiny-sentiment",
        "sentiment-analysis",
        build_bert_classifier,
        True,
        "BERT classifier, NEGATIVE/POSITIVE (softmax)",
    ),
    PresetModel(
        "tiny-multilabel",
        "sentiment-analysis",
        build_multilabel,
        False,
        "BERT classifier, 4 independent labels (sigmoid)",
    ),
    PresetModel(
        "tiny-nli",
        "zero-shot-classification",
        build_nli,
        True,
        "BERT NLI classifier: contradiction/neutral/entailment",
    ),
    PresetModel("tiny-fill-mask", "fill-mask", build_fill_mask, True, "BERT masked LM"),
    PresetModel(
        "tiny-ner", "ner", build_ner, True, "BERT token classifier, BIO tags, 64 positions"
    ),
    PresetModel(
        "tiny-qa", "question-answering", build_qa, True, "BERT extractive QA, 64 positions"
    ),
    PresetModel(
        "tiny-embed",
        "feature-extraction",
        build_embedder,
        True,
        "BERT encoder with sentence-transformers mean pooling, max_seq_length 48",
    ),
    PresetModel(
        "tiny-gpt2",
        "text-generation",
        build_gpt2,
        True,
        "GPT-2 causal LM, byte-level BPE, chat template",
    ),
    PresetModel(
        "tiny-llama",
        "text-generation",
        build_llama,
        False,
        "Llama causal LM (GQA), byte-fallback BPE, two EOS ids",
    ),
    PresetModel("tiny-t5", "summarization", build_t5, True, "T5 encoder-decoder"),
    PresetModel(
        "tiny-m2m100",
        "translation",
        build_m2m100,
        True,
        "M2M100 encoder-decoder, languages en/fr/de/es",
        {"source_language": "en"},
    ),
]
