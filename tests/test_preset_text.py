"""The text half of the ``tiny`` preset: every model builds, reloads offline with the Auto
classes and transformers' pipelines, and gives outputs that depend on its input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    GenerationConfig,
    pipeline,
)

from modelwire_server import preset
from modelwire_server.preset import corpus, text
from tests.conftest import one_torch_thread_fixture

os.environ.setdefault("HF_HUB_OFFLINE", "1")

AUTO_CLASS = {
    "tiny-sentiment": AutoModelForSequenceClassification,
    "tiny-multilabel": AutoModelForSequenceClassification,
    "tiny-nli": AutoModelForSequenceClassification,
    "tiny-fill-mask": AutoModelForMaskedLM,
    "tiny-ner": AutoModelForTokenClassification,
    "tiny-qa": AutoModelForQuestionAnswering,
    "tiny-embed": AutoModel,
    "tiny-gpt2": AutoModelForCausalLM,
    "tiny-llama": AutoModelForCausalLM,
    "tiny-t5": AutoModelForSeq2SeqLM,
    "tiny-m2m100": AutoModelForSeq2SeqLM,
}
PROMPTS = [
    "Hello, how are you?",
    "The weather is nice today.",
    "I loved this movie, it was wonderful!",
    "我喜欢学习机器学习。",
    "x",
]
UNICODE_TEXT = "Café 👨‍👩‍👧‍👦 and 你好，世界！ ok 🍕"


# These models are tiny: with two intra-op threads on a busy two-core machine each
# 64-wide matmul waits on thread hand-offs, and generation runs ~10x slower.
one_torch_thread = one_torch_thread_fixture()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every text model, built once into a temporary directory (never the user cache)."""
    root = tmp_path_factory.mktemp("preset-text")
    paths = {}
    for model in text.MODELS:
        paths[model.name] = root / model.name
        paths[model.name].mkdir()
        model.build(paths[model.name])
    return paths


def _load(path: Path, name: str) -> tuple[object, torch.nn.Module]:
    return AutoTokenizer.from_pretrained(path), AUTO_CLASS[name].from_pretrained(path).eval()


def test_registry_names_tasks_and_defaults() -> None:
    got = {m.name: (m.task, m.default) for m in text.MODELS}
    assert got == {
        "tiny-sentiment": ("sentiment-analysis", True),
        "tiny-multilabel": ("sentiment-analysis", False),
        "tiny-nli": ("zero-shot-classification", True),
        "tiny-fill-mask": ("fill-mask", True),
        "tiny-ner": ("ner", True),
        "tiny-qa": ("question-answering", True),
        "tiny-embed": ("feature-extraction", True),
        "tiny-gpt2": ("text-generation", True),
        "tiny-llama": ("text-generation", False),
        "tiny-t5": ("summarization", True),
        "tiny-m2m100": ("translation", True),
    }


def test_ensure_model_builds_into_the_cache_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELWIRE_CACHE", str(tmp_path))
    # Only the text models: this test must not depend on the media half being present.
    monkeypatch.setattr(preset, "all_models", lambda: list(text.MODELS))
    first = preset.ensure_model("tiny-sentiment")
    assert first.is_relative_to(tmp_path) and (first / ".complete").exists()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert preset.ensure_model("tiny-sentiment") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("name", list(AUTO_CLASS))
def test_reloads_offline_with_auto_classes(built: dict[str, Path], name: str) -> None:
    path = built[name]
    assert (path / "model.safetensors").exists()
    assert not (path / "pytorch_model.bin").exists()
    config = AutoConfig.from_pretrained(path)
    tokenizer, model = _load(path, name)
    assert type(model).__name__ in config.architectures
    assert tokenizer.pad_token is not None or name == "tiny-gpt2"
    # Every id the tokenizer can produce has an embedding row.
    assert len(tokenizer) <= model.get_input_embeddings().num_embeddings


@pytest.mark.parametrize("name", ["tiny-sentiment", "tiny-multilabel", "tiny-nli"])
def test_classifier_scores_depend_on_input(built: dict[str, Path], name: str) -> None:
    tokenizer, model = _load(built[name], name)
    with torch.no_grad():
        logits = model(**tokenizer(PROMPTS, return_tensors="pt", padding=True)).logits
    multi = model.config.problem_type == "multi_label_classification"
    probs = logits.sigmoid() if multi else logits.softmax(-1)
    spread = (probs.max(0).values - probs.min(0).values).max().item()
    assert spread >= 0.05
    assert multi == (name == "tiny-multilabel")


def test_label_maps(built: dict[str, Path]) -> None:
    sentiment = AutoConfig.from_pretrained(built["tiny-sentiment"])
    assert sentiment.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    assert AutoConfig.from_pretrained(built["tiny-multilabel"]).num_labels == 4
    nli = AutoConfig.from_pretrained(built["tiny-nli"])
    assert nli.label2id == {"contradiction": 0, "neutral": 1, "entailment": 2}
    ner = AutoConfig.from_pretrained(built["tiny-ner"])
    assert list(ner.id2label.values()) == text.NER_LABELS
    for name in ("tiny-ner", "tiny-qa"):
        assert AutoConfig.from_pretrained(built[name]).max_position_embeddings == 64


def test_transformers_pipelines_run(built: dict[str, Path]) -> None:
    sentiment = pipeline("sentiment-analysis", model=str(built["tiny-sentiment"]))
    assert {r["label"] for r in sentiment(PROMPTS)} <= {"NEGATIVE", "POSITIVE"}
    zero_shot = pipeline("zero-shot-classification", model=str(built["tiny-nli"]))
    result = zero_shot("I loved this movie", candidate_labels=["cinema", "food", "sport"])
    assert sorted(result["labels"]) == ["cinema", "food", "sport"]
    fill = pipeline("fill-mask", model=str(built["tiny-fill-mask"]))
    assert len(fill("The weather is [MASK] today.", top_k=3)) == 3
    ner = pipeline("ner", model=str(built["tiny-ner"]), aggregation_strategy="simple")
    for entity in ner("Alice works at Acme Corporation in New York."):
        assert entity["entity_group"] in {"PER", "ORG", "LOC", "MISC"}


def test_qa_logits_depend_on_context(built: dict[str, Path]) -> None:
    # transformers 5 removed the question-answering pipeline, so check the model itself.
    tokenizer, model = _load(built["tiny-qa"], "tiny-qa")
    question = ["Who wrote it?"] * 2
    contexts = ["Jane Austen wrote Pride and Prejudice.", "It rained all day in Paris."]
    enc = tokenizer(question, contexts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**enc)
    assert out.start_logits.shape == enc["input_ids"].shape
    assert not torch.allclose(out.start_logits[0], out.start_logits[1])


def test_wordpiece_offsets_and_pairs(built: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built["tiny-ner"])
    text_in = "Alice works at Acme in Paris."
    enc = tokenizer(text_in, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert text_in[slice(*enc["offset_mapping"][1])].lower() == tokens[1]
    pair = tokenizer("a question", "a context")
    assert set(pair["token_type_ids"]) == {0, 1}


def _greedy(name: str, path: Path, prompts: list[str]) -> list[list[int]]:
    """The 16 tokens greedy decoding adds after each prompt."""
    tokenizer, model = _load(path, name)
    languages = (
        json.loads((path / text.LANGUAGES_FILE).read_text()) if name == "tiny-m2m100" else {}
    )
    outputs = []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        kwargs: dict[str, int] = {}
        if languages:
            # M2M100 convention: source language token first, target token forced first.
            ids = [tokenizer.convert_tokens_to_ids(languages["en"]), *ids]
            kwargs["forced_bos_token_id"] = tokenizer.convert_tokens_to_ids(languages["fr"])
        input_ids = torch.tensor([ids])
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            **kwargs,
        )
        outputs.append(out[0, -16:].tolist())
    return outputs


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-t5", "tiny-m2m100"])
def test_greedy_generation_varies(built: dict[str, Path], name: str) -> None:
    outputs = _greedy(name, built[name], PROMPTS[:3])
    for tokens in outputs:
        assert len(set(tokens)) >= 8, tokens
    assert len({tuple(tokens) for tokens in outputs}) == len(outputs)


def test_generation_configs(built: dict[str, Path]) -> None:
    gpt2 = GenerationConfig.from_pretrained(built["tiny-gpt2"])
    assert gpt2.do_sample is False and isinstance(gpt2.eos_token_id, int)
    llama_tok = AutoTokenizer.from_pretrained(built["tiny-llama"])
    llama = GenerationConfig.from_pretrained(built["tiny-llama"])
    assert llama.eos_token_id == [
        llama_tok.eos_token_id,
        llama_tok.convert_tokens_to_ids("<|eot|>"),
    ]
    t5 = AutoConfig.from_pretrained(built["tiny-t5"])
    assert t5.pad_token_id == 0 and t5.decoder_start_token_id == 0
    m2m = AutoConfig.from_pretrained(built["tiny-m2m100"])
    assert m2m.decoder_start_token_id == m2m.eos_token_id


def test_m2m100_language_tokens(built: dict[str, Path]) -> None:
    path = built["tiny-m2m100"]
    languages = json.loads((path / text.LANGUAGES_FILE).read_text())
    assert languages == {"en": "__en__", "fr": "__fr__", "de": "__de__", "es": "__es__"}
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("__fr__ bonjour", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("__fr__")
    assert "__fr__" in tokenizer.all_special_tokens


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-t5"])
def test_byte_tokenizers_round_trip_unicode(built: dict[str, Path], name: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built[name])
    ids = tokenizer(UNICODE_TEXT, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids or name == "tiny-gpt2"
    assert tokenizer.decode(ids) == UNICODE_TEXT
    with_specials = tokenizer(UNICODE_TEXT)["input_ids"]
    assert tokenizer.decode(with_specials, skip_special_tokens=True) == UNICODE_TEXT


def test_sentencepiece_byte_fallback_tokens() -> None:
    tokenizer = corpus.train_sentencepiece_bpe(300)
    assert tokenizer.convert_ids_to_tokens(list(range(4))) == ["<pad>", "</s>", "<unk>", "<s>"]
    # A rare character outside the learned alphabet is spelled with its UTF-8 bytes.
    tokens = tokenizer.tokenize("🦜")
    assert tokens[-4:] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x9C>"]
    assert tokenizer.convert_tokens_to_string(tokens) == "🦜"


def test_llama_adds_bos_and_t5_appends_eos(built: dict[str, Path]) -> None:
    llama = AutoTokenizer.from_pretrained(built["tiny-llama"])
    ids = llama("hello")["input_ids"]
    assert ids[0] == llama.bos_token_id and ids[-1] != llama.eos_token_id
    t5 = AutoTokenizer.from_pretrained(built["tiny-t5"])
    assert t5("hello")["input_ids"][-1] == t5.eos_token_id


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_chat_template_renders(built: dict[str, Path], name: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built[name])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "Be brief." in prompt and "Hi there" in prompt
    assert prompt.endswith("<|assistant|>\n")
    bare = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert not bare.endswith("<|assistant|>\n")


def test_embedder_sentence_transformers_files(built: dict[str, Path]) -> None:
    path = built["tiny-embed"]
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True
    assert pooling["word_embedding_dimension"] == AutoConfig.from_pretrained(path).hidden_size
    st_config = json.loads((path / "sentence_bert_config.json").read_text())
    assert st_config["max_seq_length"] == 48
    modules = json.loads((path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]


def test_padded_vocabulary_for_full_size_shapes(tmp_path: Path) -> None:
    # A benchmark builds real checkpoint shapes through the builders: the tokenizer must
    # cover every id the model can emit, and encoding must not change.
    text.build_llama(tmp_path, vocab_size=1100)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == AutoConfig.from_pretrained(tmp_path).vocab_size == 1100
    plain = text._llama_tokenizer({})
    sample = "hi <|eot|> 你好🦜"
    assert tokenizer(sample)["input_ids"] == plain(sample)["input_ids"]
    assert tokenizer.decode([1099]).strip()
