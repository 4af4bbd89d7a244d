"""Image and audio models of the ``tiny`` preset: random weights, real model classes.

Every builder writes a directory that ``from_pretrained`` (Auto classes, processors and
``pipeline(...)``) loads offline. Widths are tiny and there are two layers per stack, so
a build takes well under a second and inference is cheap on a CPU.

Random weights at transformers' default init (std 0.02) make a model nearly constant:
every input gets the same class scores and a decoder repeats one token. Each config
therefore raises its init range (``_INIT``) and, where a model still averages its input
away, a builder says so and sharpens it. Weight init is seeded (tokenizers come from
the corpus trainers).

Layouts beyond the usual ``save_pretrained`` files:

- ``tiny-speecht5``: the HiFi-GAN vocoder is saved in ``vocoder/`` and a default speaker
  embedding in ``speaker_embeddings.npy`` (float32, shape ``[1, speaker_embedding_dim]``).
- ``tiny-whisper``: 30-second windows as in real Whisper (3000 mel frames, 1500 encoder
  positions), all 100 Whisper language tokens, and timestamp tokens ``<|0.00|>`` to
  ``<|30.00|>``; ``generation_config`` carries ``lang_to_id``/``task_to_id``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

# transformers resolves attributes lazily: listing the preset must not load a dozen
# model modules, so every class is looked up on the module only when a build runs.
import transformers

from modelwire_server.preset import PresetModel
from modelwire_server.preset.corpus import (
    corpus,
    set_template,
    train_byte_level_bpe,
    train_sentencepiece_bpe,
    train_wordpiece,
)

if TYPE_CHECKING:
    from transformers import (
        CLIPVisionConfig,
        DetrForObjectDetection,
        GenerationConfig,
        LlamaConfig,
        SpeechT5HifiGan,
        SpeechT5Tokenizer,
        ViTConfig,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        WhisperTokenizer,
    )

# Weight init std for every config (transformers' default is 0.02, see module docstring).
_INIT = 0.2
_SEED = 0
_SAMPLING_RATE = 16_000

IMAGE_LABELS = ["cat", "dog", "bird", "car", "tree"]
DETECTION_LABELS = ["person", "car", "dog", "cat", "bicycle"]
AUDIO_LABELS = ["speech", "music", "noise", "silence", "animal"]


@contextmanager
def _seeded(seed: int = _SEED) -> Iterator[None]:
    """Seed weight init without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _label_maps(labels: list[str]) -> dict[str, dict]:
    return {
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


class _Saveable(Protocol):
    def save_pretrained(self, save_directory: str | Path) -> object: ...


def _save(path: Path, *parts: _Saveable) -> None:
    """Write a model and its processors side by side (safetensors, transformers' default)."""
    for part in parts:
        part.save_pretrained(path)


@torch.no_grad()
def _quiet_rows(weight: torch.Tensor, ids: list[int], factor: float = 0.1) -> None:
    """Shrink the output-embedding rows of ``ids`` so greedy decoding rarely picks them.

    A random LM head picks control tokens (language tags, timestamps, stray bytes) as
    often as text, which real models never do and which sends Whisper's segment logic
    into loops; shrunken rows keep those tokens reachable but unlikely.
    """
    weight[ids] *= factor


# ------------------------------------------------------------------------------ images


def _tiny_vit_config(**extra: object) -> ViTConfig:
    """The preset's ViT: 32x32 input, 8x8 patches, 2 layers of width 32."""
    return transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=_INIT,
        **extra,
    )


def build_vit(path: Path) -> None:
    """``tiny-vit``: ViT image classifier, 32x32 input, 8x8 patches, five labels."""
    config = _tiny_vit_config(**_label_maps(IMAGE_LABELS))
    with _seeded():
        model = transformers.ViTForImageClassification(config).eval()
    _save(path, model, transformers.ViTImageProcessor(size={"height": 32, "width": 32}))


def build_detr(path: Path) -> None:
    """``tiny-detr``: DETR with a two-stage transformers ResNet backbone (no timm).

    DETR's decoder never adds its object queries to the residual stream, only to the
    attention queries, so with random weights all queries average the same image tokens
    and predict the same box. A one-layer encoder (less token mixing), unit-scale query
    embeddings and sharper attention queries give each query its own box and label.
    """
    backbone = transformers.ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        out_features=["stage2"],
    )
    config = transformers.DetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        num_queries=10,
        encoder_layers=1,
        decoder_layers=2,
        d_model=32,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        init_std=_INIT,
        **_label_maps(DETECTION_LABELS),
    )
    with _seeded():
        model = transformers.DetrForObjectDetection(config).eval()
        _diversify_detr_queries(model)
    processor = transformers.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    _save(path, model, processor)


@torch.no_grad()
def _diversify_detr_queries(model: DetrForObjectDetection) -> None:
    model.model.query_position_embeddings.weight.normal_(0.0, 1.0)
    for layer in model.model.decoder.layers:
        layer.encoder_attn.q_proj.weight.mul_(6.0)
    for layer in model.model.encoder.layers:
        layer.self_attn.q_proj.weight.mul_(6.0)


def build_blip(path: Path) -> None:
    """``tiny-blip``: BLIP captioner; ``[DEC]`` starts captions and ``[SEP]`` ends them.

    As in Salesforce's checkpoints, the processor's tokenizer adds ``[CLS] ... [SEP]``
    and ``generate`` swaps ``[CLS]`` for ``[DEC]`` and drops the trailing ``[SEP]``, so a
    text prompt is continued. BLIP's ``generate`` calls its inner text decoder, which
    does not read this ``generation_config``: pass generation parameters explicitly.
    """
    tokenizer = train_wordpiece(600, extra_special=["[DEC]", "[ENC]"])
    tokenizer.bos_token = "[DEC]"
    tokenizer.model_max_length = 64
    ids = tokenizer.convert_tokens_to_ids
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "initializer_range": _INIT,
        "bos_token_id": ids("[DEC]"),
        "eos_token_id": ids("[SEP]"),
        "sep_token_id": ids("[SEP]"),
        "pad_token_id": ids("[PAD]"),
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        # BLIP's vision default is 1e-10, which would make every image look alike.
        "initializer_range": _INIT,
    }
    config = transformers.BlipConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=32,
        image_text_hidden_size=32,
        initializer_range=_INIT,
    )
    with _seeded():
        model = transformers.BlipForConditionalGeneration(config).eval()
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids("[DEC]"),
        eos_token_id=ids("[SEP]"),
        pad_token_id=ids("[PAD]"),
        max_new_tokens=20,
    )
    image_processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    _save(path, model, transformers.BlipProcessor(image_processor, tokenizer))


def build_vit_gpt2(path: Path) -> None:
    """``tiny-vit-gpt2``: vision-encoder-decoder captioner, ViT encoder + GPT-2 decoder.

    The decoder cross-attends to the ViT patches; captions start from
    ``<|endoftext|>`` (the decoder start, as in nlpconnect/vit-gpt2-image-captioning),
    which also ends them and pads. Loads as ``VisionEncoderDecoderModel`` with
    ``AutoImageProcessor`` (ViT) and ``AutoTokenizer`` (byte-level BPE); there is no
    joint processor, as in the Hub checkpoints of this kind.
    """
    tokenizer = train_byte_level_bpe(600)
    tokenizer.model_max_length = 64
    eos = tokenizer.eos_token_id
    encoder = _tiny_vit_config()
    decoder = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,  # wider than the ViT (32): exercises enc_to_dec_proj, varies more
        n_layer=2,
        n_head=2,
        n_positions=64,
        add_cross_attention=True,
        is_decoder=True,
        initializer_range=_INIT,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = eos
    config.pad_token_id = eos
    config.eos_token_id = eos
    with _seeded():
        model = transformers.VisionEncoderDecoderModel(config=config).eval()
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        max_new_tokens=20,
    )
    _save(path, model, transformers.ViTImageProcessor(size={"height": 32, "width": 32}), tokenizer)


def build_llava(path: Path) -> None:
    """``tiny-llava``: CLIP vision tower + Llama decoder, 16 ``<image>`` tokens per image.

    The chat template is the llava-hf one: ``USER: <image>\\n... ASSISTANT:``, images
    first within a turn. The tokenizer prepends ``<s>`` (Llama) and ``</s>`` ends turns.
    """
    tokenizer = train_sentencepiece_bpe(1000, extra_special=["<image>"])
    set_template(tokenizer, bos="<s>")
    tokenizer.model_max_length = 512
    tokenizer.chat_template = _LLAVA_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids
    config = transformers.LlavaConfig(
        vision_config=_clip_vision_config(),
        text_config=_llama_config(len(tokenizer), ids),
        image_token_index=ids("<image>"),
        image_seq_length=16,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    with _seeded():
        model = transformers.LlavaForConditionalGeneration(config).eval()
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids("<s>"),
        eos_token_id=ids("</s>"),
        pad_token_id=ids("<pad>"),
        max_new_tokens=20,
    )
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by "default"
        chat_template=_LLAVA_TEMPLATE,
    )
    _save(path, model, processor)


def _clip_vision_config() -> CLIPVisionConfig:
    return transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        initializer_range=_INIT,
    )


def _llama_config(vocab_size: int, ids: Callable[[str], int]) -> LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        initializer_range=_INIT,
        bos_token_id=ids("<s>"),
        eos_token_id=ids("</s>"),
        pad_token_id=ids("<pad>"),
        tie_word_embeddings=False,
    )


# llava-hf/llava-1.5 style; content may be a plain string or a list of typed parts.
_LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% set prefix = '' %}"
    "{% else %}"
    "{% set prefix = message['role'].upper() + ': ' %}"
    "{% endif %}"
    "{{ prefix }}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}"
    "{{ part['text'] }}{% if not loop.last %}{{ ' ' }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '</s>' }}{% endif %}"
    "{{ ' ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


# ------------------------------------------------------------------------ audio input


# Characters of the CTC vocabulary, after the four specials and the word delimiter "|".
_CTC_CHARS = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")


def _wav2vec2_config(**extra: object) -> Wav2Vec2Config:
    return transformers.Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        initializer_range=_INIT,
        **extra,
    )


def _wav2vec2_feature_extractor() -> Wav2Vec2FeatureExtractor:
    return transformers.Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=_SAMPLING_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )


def build_wav2vec2_ctc(path: Path) -> None:
    """``tiny-wav2vec2-ctc``: character CTC over A-Z and apostrophe, ``|`` between words."""
    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|", *_CTC_CHARS]
    vocab_file = path / "vocab.json"
    path.mkdir(parents=True, exist_ok=True)
    vocab_file.write_text(json.dumps({c: i for i, c in enumerate(vocab)}))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(
        str(vocab_file),
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        word_delimiter_token="|",
    )
    config = _wav2vec2_config(vocab_size=len(vocab), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with _seeded():
        model = transformers.Wav2Vec2ForCTC(config).eval()
    processor = transformers.Wav2Vec2Processor(
        feature_extractor=_wav2vec2_feature_extractor(), tokenizer=tokenizer
    )
    _save(path, model, processor)


def build_audio_cls(path: Path) -> None:
    """``tiny-audio-cls``: wav2vec2 sequence classifier over five labels."""
    config = _wav2vec2_config(classifier_proj_size=16, **_label_maps(AUDIO_LABELS))
    with _seeded():
        model = transformers.Wav2Vec2ForSequenceClassification(config).eval()
    _save(path, model, _wav2vec2_feature_extractor())


def _whisper_languages() -> list[str]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return list(LANGUAGES)


def _whisper_control_tokens() -> list[str]:
    """Whisper's control tokens after ``<|endoftext|>``, in Whisper's id order.

    The tokenizer computes a language's id as ``<|startoftranscript|>`` + 1 + its index
    in ``LANGUAGES``, so all 100 languages must be present, in that order.
    """
    return [
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in _whisper_languages()),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]


# Timestamp ids must follow <|notimestamps|> directly (timestamp_begin = its id + 1).
_WHISPER_TIMESTAMPS = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]


def _whisper_tokenizer() -> WhisperTokenizer:
    """A byte-level BPE from the corpus, re-packed with Whisper's special-token layout."""
    trained = train_byte_level_bpe(700)
    state = json.loads(trained.backend_tokenizer.to_str())
    added = {token["content"] for token in state["added_tokens"]}
    # Text tokens first and <|endoftext|> right after them: Whisper treats every id at
    # or above its first special token as special.
    pieces = sorted(
        (t for t in state["model"]["vocab"] if t not in added), key=state["model"]["vocab"].get
    )
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]
    ]
    tokenizer = transformers.WhisperTokenizer(
        vocab={t: i for i, t in enumerate(pieces)}, merges=merges
    )
    tokenizer.add_special_tokens({"extra_special_tokens": _whisper_control_tokens()})
    # Timestamps are plain added tokens in Whisper, so decode() keeps them unless asked.
    tokenizer.add_tokens(
        [transformers.AddedToken(t, normalized=False, special=False) for t in _WHISPER_TIMESTAMPS]
    )
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.model_max_length = 448
    return tokenizer


def _whisper_generation_config(tokenizer: WhisperTokenizer) -> GenerationConfig:
    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    return transformers.GenerationConfig(
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        max_length=64,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in _whisper_languages()},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50,
        begin_suppress_tokens=[ids("Ġ"), eot],
        # Decoder layer 1: both heads, for return_timestamps="word" (DTW alignment).
        alignment_heads=[[1, 0], [1, 1]],
        return_timestamps=False,
    )


def _unprintable_ids(tokenizer: WhisperTokenizer) -> list[int]:
    """Text tokens that decode to control characters or broken UTF-8."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = []
    for i in range(eot):
        text = tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(i)])
        if not text.isprintable() or "\ufffd" in text:
            ids.append(i)
    return ids


def build_whisper(path: Path) -> None:
    """``tiny-whisper``: multilingual Whisper with 80 mel bins and 30-second windows.

    The window stays at Whisper's 30 s because transformers hard-codes 1500-position
    segments in places (timestamp offsets of long-form output); the encoder is 32 wide,
    so 1500 positions cost little.
    """
    tokenizer = _whisper_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    config = transformers.WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        encoder_layers=2,
        decoder_layers=2,
        d_model=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=448,
        # Tied random embeddings make each token its own best successor, so the decoder
        # repeats one token whatever the audio; untied, with a wider init, it does not.
        init_std=0.5,
        tie_word_embeddings=False,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        # The defaults are real Whisper's ids; suppression lives in generation_config.
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    with _seeded():
        model = transformers.WhisperForConditionalGeneration(config).eval()
    quiet = [*_unprintable_ids(tokenizer), *range(eot + 1, len(tokenizer))]
    _quiet_rows(model.get_output_embeddings().weight, quiet)
    model.generation_config = _whisper_generation_config(tokenizer)
    feature_extractor = transformers.WhisperFeatureExtractor(
        feature_size=80, sampling_rate=_SAMPLING_RATE
    )
    _save(
        path,
        model,
        transformers.WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer),
    )


# ----------------------------------------------------------------------- audio output


_VITS_CHARS = [
    "<pad>",
    " ",
    "'",
    "-",
    ".",
    ",",
    "?",
    "!",
    *"0123456789",
    *"abcdefghijklmnopqrstuvwxyz",
    "<unk>",
]


def build_vits(path: Path) -> None:
    """``tiny-vits``: VITS over lowercase characters (no phonemizer), 16 kHz output.

    The tokenizer lowercases and drops characters outside its vocabulary; ``<pad>`` (id
    0) is the blank interleaved between characters. Inference draws noise: seed torch
    for repeatable audio.
    """
    path.mkdir(parents=True, exist_ok=True)
    vocab_file = path / "vocab.json"
    vocab_file.write_text(json.dumps({c: i for i, c in enumerate(_VITS_CHARS)}))
    tokenizer = transformers.VitsTokenizer(
        str(vocab_file), phonemize=False, add_blank=True, normalize=True
    )
    config = transformers.VitsConfig(
        vocab_size=len(_VITS_CHARS),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=32,
        flow_size=16,
        spectrogram_bins=17,
        upsample_initial_channel=32,
        upsample_rates=[8, 8, 4],
        upsample_kernel_sizes=[16, 16, 8],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        duration_predictor_filter_channels=16,
        duration_predictor_num_flows=2,
        depth_separable_num_layers=2,
        prior_encoder_num_wavenet_layers=2,
        posterior_encoder_num_wavenet_layers=2,
        initializer_range=_INIT,
        sampling_rate=_SAMPLING_RATE,
        pad_token_id=0,
    )
    with _seeded():
        model = transformers.VitsModel(config).eval()
    _save(path, model, tokenizer)


def _speecht5_tokenizer(path: Path) -> SpeechT5Tokenizer:
    """A character-level sentencepiece model trained on the corpus (as spm_char.model)."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=buffer,
        model_type="char",
        vocab_size=80,
        hard_vocab_limit=False,
        character_coverage=0.99,
        # SpeechT5's id layout: <s> 0, <pad> 1, </s> 2, <unk> 3.
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    model_file = path / "spm_char.model"
    model_file.write_bytes(buffer.getvalue())
    return transformers.SpeechT5Tokenizer(str(model_file))


def build_speecht5(path: Path) -> None:
    """``tiny-speecht5``: SpeechT5 TTS; vocoder in ``vocoder/``, speaker embedding in
    ``speaker_embeddings.npy`` (``[1, 16]`` float32).

    Load as ``SpeechT5ForTextToSpeech.from_pretrained(dir)``,
    ``SpeechT5HifiGan.from_pretrained(dir / "vocoder")`` and
    ``np.load(dir / "speaker_embeddings.npy")``. The decoder prenet applies dropout even
    in eval mode (as in the real model), so seed torch for repeatable audio. The stop
    head is biased towards "continue", so speech runs to about ``maxlenratio`` times
    the text length instead of stopping after the first frame.
    """
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _speecht5_tokenizer(path)
    config = transformers.SpeechT5Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_layers=2,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        speech_decoder_prenet_units=32,
        speech_decoder_postnet_layers=2,
        speech_decoder_postnet_units=32,
        speaker_embedding_dim=16,
        max_text_positions=256,
        max_speech_positions=2048,
        initializer_range=_INIT,
    )
    with _seeded():
        model = transformers.SpeechT5ForTextToSpeech(config).eval()
        vocoder = _speecht5_vocoder(config.num_mel_bins)
        speaker = torch.randn(1, config.speaker_embedding_dim)
    with torch.no_grad():
        model.speech_decoder_postnet.prob_out.bias.fill_(-4.0)
    processor = transformers.SpeechT5Processor(
        feature_extractor=transformers.SpeechT5FeatureExtractor(), tokenizer=tokenizer
    )
    _save(path, model, processor)
    vocoder.save_pretrained(path / "vocoder")
    np.save(path / "speaker_embeddings.npy", speaker.numpy().astype(np.float32))


def _speecht5_vocoder(num_mel_bins: int) -> SpeechT5HifiGan:
    config = transformers.SpeechT5HifiGanConfig(
        model_in_dim=num_mel_bins,
        sampling_rate=_SAMPLING_RATE,
        upsample_initial_channel=32,
        upsample_rates=[4, 4, 4, 4],
        upsample_kernel_sizes=[8, 8, 8, 8],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        initializer_range=_INIT,
    )
    return transformers.SpeechT5HifiGan(config).eval()


# ---------------------------------------------------------------------------- registry


MODELS: list[PresetModel] = [
    PresetModel("tiny-vit", "image-classification", build_vit, True, "ViT, 5 labels"),
    PresetModel("tiny-detr", "object-detection", build_detr, True, "DETR, ResNet backbone"),
    PresetModel("tiny-blip", "image-to-text", build_blip, True, "BLIP captioner"),
    PresetModel(
        "tiny-vit-gpt2", "image-to-text", build_vit_gpt2, False, "ViT + GPT-2 encoder-decoder"
    ),
    PresetModel(
        "tiny-wav2vec2-ctc",
        "automatic-speech-recognition",
        build_wav2vec2_ctc,
        True,
        "wav2vec2 character CTC",
    ),
    PresetModel(
        "tiny-whisper",
        "automatic-speech-recognition",
        build_whisper,
        False,
        "Whisper, multilingual",
    ),
    PresetModel(
        "tiny-audio-cls", "audio-classification", build_audio_cls, True, "wav2vec2, 5 labels"
    ),
    PresetModel("tiny-vits", "text-to-speech", build_vits, True, "VITS, characters"),
    PresetModel(
        "tiny-speecht5", "text-to-speech", build_speecht5, False, "SpeechT5 + HiFi-GAN vocoder"
    ),
    PresetModel("tiny-llava", "image-text-to-text", build_llava, True, "LLaVA: CLIP + Llama"),
]
