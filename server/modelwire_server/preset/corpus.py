"""A small built-in corpus and the tokenizer trainers of the ``tiny`` preset.

Tokenizers are trained with the ``tokenizers`` library on text written in this module,
so nothing is downloaded. The corpus mixes plain English, digits and punctuation, a few
French/German/Spanish sentences (for the translation model), and emoji and CJK strings:
byte-level and byte-fallback tokenizers must represent those through their byte tokens,
which is exactly the path that breaks first when decoding streams.

Every trainer returns a ``transformers`` fast tokenizer (``PreTrainedTokenizerFast``,
which transformers 5 calls ``TokenizersBackend``). Saving it with ``save_pretrained``
writes ``tokenizer.json`` verbatim and records ``tokenizer_class`` as
``TokenizersBackend``, so ``AutoTokenizer.from_pretrained`` rebuilds exactly this
pipeline instead of a model class's hard-coded one (transformers 5's model-specific
classes rebuild their normalizer/pre-tokenizer from scratch, e.g. ``T5Tokenizer`` is a
Unigram model and would not load a BPE vocabulary).
"""

from __future__ import annotations

import itertools
import json
import string
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I loved this movie, it was wonderful!",
    "This film was terrible and far too long.",
    "What a fantastic day at the beach.",
    "The service was slow, and the food arrived cold.",
    "She said the concert was the best she had ever heard.",
    "Is this the right way to the train station?",
    "My flight leaves at 7:45 on Monday, 3 March 2025.",
    "The package weighs 2.5 kg and costs $19.99.",
    "Call me at +1 (555) 010-9999 before 10 p.m.",
    "Temperatures will reach 31°C in Madrid this weekend.",
    "Apple released a new phone in California last year.",
    "Marie Curie won the Nobel Prize in Physics in 1903.",
    "The United Nations met in Geneva on Tuesday.",
    "Barack Obama was born in Honolulu, Hawaii.",
    "Google and Microsoft compete in cloud computing.",
    "The Amazon river flows through Brazil and Peru.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "Alice works at Acme Corporation in New York.",
    "The Eiffel Tower was completed in 1889.",
    "Who wrote the novel Pride and Prejudice?",
    "Jane Austen wrote Pride and Prejudice in 1813.",
    "How many moons does Jupiter have?",
    "Jupiter has at least 95 known moons.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The meeting was moved from 2 pm to 4:30 pm.",
    "Please send the report by Friday, thanks!",
    "Can you summarize this article in three sentences?",
    "Machine learning models need data, compute and care.",
    "The server returned error 503: service unavailable.",
    "Version 2.13.0 fixed a bug in the tokenizer.",
    "E-mail: support@example.com, web: https://example.com/help",
    "Use `pip install modelwire` to get started.",
    "x = 3 * (4 + 5) / 2 - 1",
    "The ratio was 3:2, roughly 60% to 40%.",
    "He didn't know what to say... so he said nothing.",
    '"Stop!" she shouted. "Don\'t touch that!"',
    "It's raining cats and dogs -- take an umbrella.",
    "Our team scored 42 points in the second half.",
    "The stock fell 7.3% after the earnings call.",
    "Translate the following sentence into French.",
    "Summarize: the council approved the new budget after a long debate.",
    "Once upon a time, there was a little red hen.",
    "The cat sat on the mat and watched the birds.",
    "Neural networks learn representations from examples.",
    "The library opens at 9 and closes at 17:00.",
    "I am not sure this is a good idea.",
    "Absolutely brilliant performance by the whole cast!",
    "Worst purchase ever; it broke after two days.",
    "The hotel room was clean, quiet and comfortable.",
    "Mount Everest is 8,849 metres tall.",
    "Tokyo, Seoul and Beijing are large Asian cities.",
    "The recipe needs 200 g of flour, 2 eggs and 1 cup of milk.",
    "Dr. Smith will see you at 3:15 p.m. on Thursday.",
    "Hello, world!",
    "Good morning, how are you today?",
    "Thank you very much for your help.",
    "The weather is nice today.",
    "I would like a cup of coffee, please.",
    "Where is the nearest hospital?",
]

# Translation pairs: the same sentence in English, French, German and Spanish.
_PARALLEL = [
    (
        "Hello, how are you?",
        "Bonjour, comment allez-vous ?",
        "Hallo, wie geht es Ihnen?",
        "Hola, ¿cómo estás?",
    ),
    (
        "The weather is nice today.",
        "Il fait beau aujourd'hui.",
        "Das Wetter ist heute schön.",
        "Hoy hace buen tiempo.",
    ),
    (
        "I would like a cup of coffee.",
        "Je voudrais une tasse de café.",
        "Ich hätte gern eine Tasse Kaffee.",
        "Quisiera una taza de café.",
    ),
    (
        "Where is the train station?",
        "Où est la gare ?",
        "Wo ist der Bahnhof?",
        "¿Dónde está la estación de tren?",
    ),
    (
        "Thank you very much.",
        "Merci beaucoup.",
        "Vielen Dank.",
        "Muchas gracias.",
    ),
    (
        "The cat sleeps on the sofa.",
        "Le chat dort sur le canapé.",
        "Die Katze schläft auf dem Sofa.",
        "El gato duerme en el sofá.",
    ),
    (
        "We are going to the market tomorrow.",
        "Nous allons au marché demain.",
        "Wir gehen morgen auf den Markt.",
        "Mañana vamos al mercado.",
    ),
    (
        "My brother is twelve years old.",
        "Mon frère a douze ans.",
        "Mein Bruder ist zwölf Jahre alt.",
        "Mi hermano tiene doce años.",
    ),
]

# Strings outside Latin-1: byte-level and byte-fallback paths must handle them.
_UNICODE = [
    "I love pizza 🍕 and coffee ☕!",
    "Great job 👍🎉 see you soon 😀",
    "Family: 👨‍👩‍👧‍👦, flags: 🇫🇷 🇩🇪 🇪🇸",
    "你好，世界！",
    "我喜欢学习机器学习。",
    "東京は日本の首都です。",
    "こんにちは、元気ですか？",
    "안녕하세요, 만나서 반갑습니다.",
    "Привет, как дела?",
    "Γειά σου κόσμε",
    "naïve café résumé — déjà vu",
    "Zürich, Köln, Straße, Ålesund, São Paulo",
    "math: ∑ x² ≤ ∞, π ≈ 3.14159",
]

_SUBJECTS = ["The teacher", "My neighbour", "A young engineer", "The old farmer", "Our manager"]
_VERBS = ["bought", "repaired", "painted", "sold", "found", "described"]
_OBJECTS = ["a red bicycle", "the broken radio", "three small boxes", "an old map", "the new car"]
_TAILS = ["yesterday.", "last week.", "in 2019.", "before lunch.", "on the 5th of May."]
_OPINIONS = ["good", "bad", "amazing", "awful", "boring", "excellent", "fine", "dreadful"]
_THINGS = ["movie", "book", "restaurant", "phone", "game", "album", "hotel", "course"]


def _templated() -> Iterator[str]:
    """Generated sentences, so the vocabulary sees many word combinations and numbers."""
    combos = itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _TAILS)
    # A stride through the product keeps the set varied without listing all 750 combos.
    for i, (subj, verb, obj, tail) in enumerate(combos):
        if i % 7 == 0:
            yield f"{subj} {verb} {obj} {tail}"
    for i, (opinion, thing) in enumerate(itertools.product(_OPINIONS, _THINGS)):
        yield f"The {thing} was {opinion}, I rated it {i % 5 + 1}/5."
    for n in range(0, 200, 7):
        yield f"Order #{n * 37 + 1000} shipped {n % 28 + 1}/{n % 12 + 1}/20{n % 30:02d}."


def corpus() -> list[str]:
    """The whole built-in corpus, a few hundred lines, in a fixed order."""
    parallel = [text for row in _PARALLEL for text in row]
    return [*_SENTENCES, *parallel, *_UNICODE, *_templated()]


def _training_iterator(repeat: int = 3) -> Iterator[str]:
    # Repeating the corpus raises pair counts above min_frequency for rare merges.
    for _ in range(repeat):
        yield from corpus()


def _specials(base: list[str], extra: list[str] | None) -> list[str]:
    return [*base, *(token for token in extra or [] if token not in base)]


def _wrap(
    tokenizer: Tokenizer, extra: list[str] | None, **kwargs: object
) -> PreTrainedTokenizerFast:
    """Wrap a trained backend as a transformers fast tokenizer with named specials."""
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **kwargs)
    if extra:
        # extra_special_tokens is transformers 5's name for additional_special_tokens.
        fast.add_special_tokens({"extra_special_tokens": list(extra)})
    return fast


# --------------------------------------------------------------------- WordPiece (BERT)

_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _learn_bpe_pieces(texts: list[str], size: int, pre_tokenizer: object) -> list[str]:
    """Pieces learned by a plain BPE trainer, in the order it created them.

    The ``tokenizers`` trainers are only deterministic without ``limit_alphabet`` and
    without a continuing-subword prefix (both break count ties in hash-map order), so
    every trainer here goes through this plain form and derives its own vocabulary.
    """
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["[UNK]"], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    vocab: dict[str, int] = json.loads(tok.to_str())["model"]["vocab"]
    return [t for t in sorted(vocab, key=vocab.__getitem__) if t != "[UNK]"]


def _wordpiece_vocab(size: int, specials: list[str], normalizer: normalizers.Normalizer) -> dict:
    # Each learned piece serves both as a word start and, with "##", as a continuation.
    texts = [normalizer.normalize_str(t) for t in _training_iterator()]
    pieces = _learn_bpe_pieces(
        texts, (size - len(specials)) // 2, pre_tokenizers.BertPreTokenizer()
    )
    vocab = {token: i for i, token in enumerate(specials)}
    for piece in pieces:
        for token in (piece, f"##{piece}"):
            vocab.setdefault(token, len(vocab))
    return vocab


def train_wordpiece(
    vocab_size: int = 1000,
    *,
    lowercase: bool = True,
    extra_special: list[str] | None = None,
) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer: ``[CLS] a [SEP] b [SEP]`` with token type ids.

    Specials come first, so ``[PAD]`` is id 0 as in BERT checkpoints.
    """
    specials = _specials(_BERT_SPECIALS, extra_special)
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    vocab = _wordpiece_vocab(vocab_size, specials, normalizer)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    tok.post_processor = processors.BertProcessing(
        ("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"])
    )
    return _wrap(
        tok,
        extra_special,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        # The generic class returns no token_type_ids unless told BERT's input names.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


# ------------------------------------------------------------------ byte-level BPE (GPT-2)


def train_byte_level_bpe(
    vocab_size: int = 1000,
    *,
    bos: str = "<|endoftext|>",
    eos: str = "<|endoftext|>",
    extra_special: list[str] | None = None,
) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE: all 256 bytes are in the base alphabet.

    No BOS/EOS is added on encode (GPT-2 does not add any); ``bos``/``eos`` are only
    registered as the tokenizer's special tokens.
    """
    specials = _specials(list(dict.fromkeys([bos, eos])), extra_special)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False matches GPT-2: offsets cover the leading space of a word piece.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_iterator(), trainer=trainer)
    return _wrap(tok, extra_special, bos_token=bos, eos_token=eos, unk_token=eos)


# ------------------------------------------------- sentencepiece-style BPE (Llama / T5)

# T5 needs <pad> at id 0 and uses </s> as EOS; Llama ignores the ids, so one order fits both.
_SP_SPECIALS = ["<pad>", "</s>", "<unk>", "<s>"]
_BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def _metaspace_tokenizer(model: models.Model) -> Tokenizer:
    tok = Tokenizer(model)
    # NFKC would turn some CJK/emoji sequences into other code points and break the
    # decode(encode(x)) == x round trip, so only the Metaspace rewrite is applied.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    # No Fuse step: the Metaspace decoder only turns a *leading* "▁" of each token into a
    # space, so fusing the tokens first would drop every space but the first.
    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
    )
    return tok


def _common_chars_only(texts: list[str], keep: int) -> list[str]:
    """Blank out all but the ``keep`` most frequent characters (ties by code point).

    Rare characters (emoji, most CJK) then never enter the vocabulary and go through the
    byte fallback, as in real Llama/T5 vocabularies. This replaces the trainer's own
    ``limit_alphabet``, which breaks frequency ties differently on every run.
    """
    counts = Counter(ch for text in texts for ch in text)
    ranked = sorted(counts, key=lambda ch: (-counts[ch], ch))
    kept = {*ranked[:keep], " "}
    return ["".join(ch if ch in kept else " " for ch in text) for text in texts]


def _train_plain_bpe(vocab_size: int, alphabet_size: int) -> tuple[dict[str, int], list]:
    """Train the word-piece part of the vocabulary; returns (vocab, merges)."""
    tok = _metaspace_tokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>"], show_progress=False
    )
    texts = _common_chars_only(list(_training_iterator()), alphabet_size)
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], model["merges"]


def train_sentencepiece_bpe(
    vocab_size: int = 1000,
    *,
    extra_special: list[str] | None = None,
) -> PreTrainedTokenizerFast:
    """A Llama/T5-style tokenizer: Metaspace ``▁`` words, BPE with byte fallback.

    Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``<s>`` 3, then the 256 byte tokens
    ``<0x00>``..``<0xFF>``, then the learned pieces. Encoding appends ``</s>`` (T5
    behaviour); models that want no EOS on prompts (Llama) pass
    ``add_special_tokens=False`` or are saved with their own post-processor.
    """
    fixed = [*_SP_SPECIALS, *_BYTE_TOKENS]
    learned_vocab, merges = _train_plain_bpe(max(vocab_size - len(fixed), 100), 120)
    vocab = {token: i for i, token in enumerate(fixed)}
    for token in sorted(learned_vocab, key=learned_vocab.__getitem__):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    bpe = models.BPE(
        vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True
    )
    tok = _metaspace_tokenizer(bpe)
    # The control tokens must never be produced from plain text such as "<s>" in a prompt
    # unless they are registered as special; byte tokens are left unregistered on purpose.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _SP_SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return _wrap(
        tok,
        extra_special,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
    )


def set_template(
    tokenizer: PreTrainedTokenizerFast, *, bos: str | None = None, eos: str | None = None
) -> None:
    """Replace the post-processor so encoding adds ``bos`` before and/or ``eos`` after.

    Llama prepends ``<s>`` and adds no EOS; T5 appends ``</s>``; GPT-2 adds nothing.
    """
    single = " ".join(
        x for x in (f"{bos}:0" if bos else "", "$A:0", f"{eos}:0" if eos else "") if x
    )
    pair_b = " ".join(
        x for x in (f"{bos}:1" if bos else "", "$B:1", f"{eos}:1" if eos else "") if x
    )
    used = [t for t in dict.fromkeys([bos, eos]) if t]
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single,
        pair=f"{single} {pair_b}",
        special_tokens=[(t, tokenizer.convert_tokens_to_ids(t)) for t in used],
    )


def _fillers(prefix: str, taken: dict[str, int]) -> Iterator[str]:
    """Word-like pieces (" ab", " abc", ...) that are not in the vocabulary yet."""
    for length in itertools.count(2):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            piece = prefix + "".join(letters)
            if piece not in taken:
                yield piece


def pad_vocabulary(tokenizer: PreTrainedTokenizerFast, size: int) -> PreTrainedTokenizerFast:
    """A copy of a BPE ``tokenizer`` whose vocabulary has exactly ``size`` ids.

    For models built with a real checkpoint's vocabulary size (GPT-2's 50257, ...): every
    id the model can generate must decode to text. The added pieces have no merge rule
    that produces them, so encoding is unchanged; decoding them gives short words.
    """
    if len(tokenizer) >= size:
        return tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        path = Path(tmp) / "tokenizer.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab: dict[str, int] = data["model"]["vocab"]
        # Added tokens join the model vocabulary first: on load, an added token missing
        # from it gets id = model size, which after padding would clash with a filler.
        for added in data["added_tokens"]:
            vocab.setdefault(added["content"], added["id"])
        prefix = "Ġ" if data["decoder"]["type"] == "ByteLevel" else "▁"
        # strict=False: the fillers never run out, the id range decides how many are used.
        new_ids = range(len(tokenizer), size)
        for token_id, piece in zip(new_ids, _fillers(prefix, vocab), strict=False):
            vocab[piece] = token_id
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return PreTrainedTokenizerFast.from_pretrained(tmp)


__all__ = [
    "corpus",
    "pad_vocabulary",
    "set_template",
    "train_byte_level_bpe",
    "train_sentencepiece_bpe",
    "train_wordpiece",
]
