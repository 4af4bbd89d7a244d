"""The media half of the ``tiny`` preset: every model builds into a fresh cache, reloads
offline with the Auto classes (and transformers' pipelines, the server's parity
references), and gives outputs that depend on its input."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModelForAudioClassification,
    AutoModelForCTC,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForObjectDetection,
    AutoModelForSpeechSeq2Seq,
    AutoModelForTextToSpectrogram,
    AutoModelForTextToWaveform,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    SpeechT5HifiGan,
    pipeline,
)

from modelwire_server import preset
from modelwire_server.preset import media
from tests.conftest import one_torch_thread_fixture

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXPECTED = {
    "tiny-vit": ("image-classification", True),
    "tiny-detr": ("object-detection", True),
    "tiny-blip": ("image-to-text", True),
    "tiny-vit-gpt2": ("image-to-text", False),
    "tiny-wav2vec2-ctc": ("automatic-speech-recognition", True),
    "tiny-whisper": ("automatic-speech-recognition", False),
    "tiny-audio-cls": ("audio-classification", True),
    "tiny-vits": ("text-to-speech", True),
    "tiny-speecht5": ("text-to-speech", False),
    "tiny-llava": ("image-text-to-text", True),
}
SR = 16_000


# These models are a few kB wide: with several threads on a busy CI box, thread
# hand-offs cost more than the arithmetic (SpeechT5 ran 10x slower).
one_thread = one_torch_thread_fixture()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Every media model, built once through the preset cache into a temp directory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELWIRE_CACHE", str(tmp_path_factory.mktemp("preset-media")))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield {model.name: preset.ensure_model(model.name) for model in media.MODELS}


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    gradient = np.linspace(0, 255, 40 * 40 * 3).reshape(40, 40, 3).astype(np.uint8)
    return [noise, Image.fromarray(gradient)]


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    t = np.arange(int(1.5 * SR)) / SR
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return [noise, tone]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------- registry


def test_registry_names_tasks_and_defaults() -> None:
    assert {m.name: (m.task, m.default) for m in media.MODELS} == EXPECTED
    assert all(preset.get(name).task == task for name, (task, _) in EXPECTED.items())


def test_every_build_writes_safetensors_only(built: dict[str, Path]) -> None:
    for name, path in built.items():
        assert (path / ".complete").exists(), name
        assert (path / "model.safetensors").exists(), name
        assert not list(path.rglob("*.bin")), name
    assert (built["tiny-speecht5"] / "vocoder" / "model.safetensors").exists()


# ------------------------------------------------------------------------------ images


def test_vit_scores_depend_on_the_image(built: dict[str, Path], images: list[Image.Image]) -> None:
    path = built["tiny-vit"]
    model = AutoModelForImageClassification.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    with torch.no_grad():
        probs = model(**processor(images, return_tensors="pt")).logits.softmax(-1)
    assert _max_diff(probs[0], probs[1]) >= 0.05
    results = pipeline("image-classification", model=str(path))(images[0], top_k=10)
    assert sorted(r["label"] for r in results) == sorted(media.IMAGE_LABELS)


def test_detr_detections_depend_on_the_image(
    built: dict[str, Path], images: list[Image.Image]
) -> None:
    path = built["tiny-detr"]
    config = AutoModelForObjectDetection.from_pretrained(path).config
    assert config.backbone_config.model_type == "resnet"  # transformers' own, not timm
    detector = pipeline("object-detection", model=str(path))
    first, second = (detector(image, threshold=0.0) for image in images)
    assert len(first) == 10 and {d["label"] for d in first} <= set(media.DETECTION_LABELS)
    assert [d["score"] for d in first] != [d["score"] for d in second]
    # Each query predicts its own box, not one box repeated ten times.
    assert len({tuple(d["box"].values()) for d in first}) > 1


def test_blip_captions_depend_on_the_image(
    built: dict[str, Path], images: list[Image.Image]
) -> None:
    path = built["tiny-blip"]
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    captions = [
        model.generate(**processor(images=image, return_tensors="pt"), max_new_tokens=8)
        for image in images
    ]
    assert captions[0].tolist() != captions[1].tolist()
    prompted = model.generate(
        **processor(images=images[0], text="a picture of", return_tensors="pt"),
        max_new_tokens=4,
    )
    assert processor.decode(prompted[0], skip_special_tokens=True).startswith("a picture of")


def test_vit_gpt2_captions_depend_on_the_image(
    built: dict[str, Path], images: list[Image.Image]
) -> None:
    path = built["tiny-vit-gpt2"]
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert type(model).__name__ == "VisionEncoderDecoderModel"
    image_processor = AutoImageProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    start = model.generation_config.decoder_start_token_id
    assert start == model.generation_config.eos_token_id == tokenizer.eos_token_id
    pixels = [image_processor(images=image, return_tensors="pt").pixel_values for image in images]
    captions = [model.generate(pixel_values=p, max_new_tokens=8)[0].tolist() for p in pixels]
    assert captions[0] != captions[1]
    assert max(len(set(c[1:])) for c in captions) > 2, f"degenerate captions: {captions}"
    # A decoder prompt is a forced prefix the caption continues.
    prompt = [start, *tokenizer("a picture of", add_special_tokens=False)["input_ids"]]
    prompted = model.generate(
        pixel_values=pixels[0], decoder_input_ids=torch.tensor([prompt]), max_new_tokens=4
    )
    assert tokenizer.decode(prompted[0], skip_special_tokens=True).startswith("a picture of")


def test_llava_chat_generation_depends_on_the_image(
    built: dict[str, Path], images: list[Image.Image]
) -> None:
    path = built["tiny-llava"]
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    outputs = []
    for image in images:
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}],
            }
        ]
        inputs = processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 16
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        outputs.append(generated[0, inputs["input_ids"].shape[1] :].tolist())
    assert outputs[0] != outputs[1]
    text_only = [{"role": "user", "content": "Hi"}]
    rendered = processor.apply_chat_template(text_only, add_generation_prompt=True, tokenize=False)
    assert rendered == "USER: Hi ASSISTANT:"


# ------------------------------------------------------------------------------- audio


def test_wav2vec2_ctc_logits_depend_on_the_clip(
    built: dict[str, Path], clips: list[np.ndarray]
) -> None:
    path = built["tiny-wav2vec2-ctc"]
    model = AutoModelForCTC.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    with torch.no_grad():
        logits = [
            model(**processor(clip, sampling_rate=SR, return_tensors="pt")).logits.mean(1)
            for clip in clips
        ]
    assert _max_diff(logits[0].softmax(-1), logits[1].softmax(-1)) >= 0.05
    asr = pipeline("automatic-speech-recognition", model=str(path))
    assert isinstance(asr(clips[1])["text"], str)
    assert "chunks" in asr(clips[1], return_timestamps="char")


def test_whisper_generation_depends_on_the_clip(
    built: dict[str, Path], clips: list[np.ndarray]
) -> None:
    path = built["tiny-whisper"]
    model = AutoModelForSpeechSeq2Seq.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    features = [
        processor(clip, sampling_rate=SR, return_tensors="pt").input_features for clip in clips
    ]
    assert features[0].shape == (1, 80, 3000)
    outputs = [model.generate(f, max_new_tokens=8).tolist() for f in features]
    assert outputs[0] != outputs[1]
    translated = model.generate(features[0], max_new_tokens=4, language="fr", task="translate")
    assert translated.shape[0] == 1


def test_whisper_token_layout_matches_transformers_assumptions(built: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built["tiny-whisper"])
    config = GenerationConfig.from_pretrained(built["tiny-whisper"])
    ids = tokenizer.convert_tokens_to_ids
    assert type(tokenizer).__name__ == "WhisperTokenizer"
    # Timestamp tokens start right after the last special token (<|notimestamps|>).
    assert tokenizer.all_special_ids[-1] == ids("<|notimestamps|>") == config.no_timestamps_token_id
    assert ids("<|0.00|>") == config.no_timestamps_token_id + 1
    assert ids("<|30.00|>") == ids("<|0.00|>") + 1500
    assert config.lang_to_id["<|fr|>"] == ids("<|fr|>")
    tokenizer.set_prefix_tokens(language="german", task="transcribe")
    assert tokenizer.prefix_tokens[:3] == [
        ids("<|startoftranscript|>"),
        ids("<|de|>"),
        ids("<|transcribe|>"),
    ]


def test_whisper_pipeline_runs_with_and_without_timestamps(
    built: dict[str, Path], clips: list[np.ndarray]
) -> None:
    asr = pipeline("automatic-speech-recognition", model=str(built["tiny-whisper"]))
    short = {"max_new_tokens": 8}
    assert isinstance(asr(clips[0], generate_kwargs=short)["text"], str)
    timed = asr(clips[1], return_timestamps=True, generate_kwargs=short)
    assert "chunks" in timed
    french = asr(clips[1], generate_kwargs={**short, "language": "fr"}, return_language=True)
    assert french["chunks"][0]["language"] == "french"


def test_audio_classifier_scores_depend_on_the_clip(
    built: dict[str, Path], clips: list[np.ndarray]
) -> None:
    path = built["tiny-audio-cls"]
    model = AutoModelForAudioClassification.from_pretrained(path).eval()
    extractor = AutoFeatureExtractor.from_pretrained(path)
    with torch.no_grad():
        probs = [
            model(**extractor(clip, sampling_rate=SR, return_tensors="pt")).logits.softmax(-1)
            for clip in clips
        ]
    assert _max_diff(probs[0], probs[1]) >= 0.05
    results = pipeline("audio-classification", model=str(path))(clips[0], top_k=10)
    assert sorted(r["label"] for r in results) == sorted(media.AUDIO_LABELS)


# ---------------------------------------------------------------------- text to speech


def test_vits_waveform_depends_on_the_text(built: dict[str, Path]) -> None:
    path = built["tiny-vits"]
    model = AutoModelForTextToWaveform.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.sampling_rate == SR
    waves = []
    for text in ["Hello world.", "Good morning, how are you?"]:
        torch.manual_seed(0)
        with torch.no_grad():
            waves.append(model(**tokenizer(text, return_tensors="pt")).waveform[0])
    assert all(w.numel() > 0 and torch.isfinite(w).all() for w in waves)
    n = min(w.numel() for w in waves)
    assert waves[0].numel() != waves[1].numel() or _max_diff(waves[0][:n], waves[1][:n]) > 0.01


def test_speecht5_speech_depends_on_the_text(built: dict[str, Path]) -> None:
    path = built["tiny-speecht5"]
    model = AutoModelForTextToSpectrogram.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    vocoder = SpeechT5HifiGan.from_pretrained(path / "vocoder").eval()
    speaker = torch.from_numpy(np.load(path / "speaker_embeddings.npy"))
    assert speaker.shape == (1, model.config.speaker_embedding_dim)
    assert vocoder.config.sampling_rate == SR
    waves = []
    for text in ["Hello world", "Thank you"]:
        torch.manual_seed(0)  # the decoder prenet's dropout is active at inference
        ids = processor(text=text, return_tensors="pt").input_ids
        waves.append(model.generate_speech(ids, speaker, vocoder=vocoder, maxlenratio=4.0))
    assert all(w.numel() > 256 and torch.isfinite(w).all() for w in waves)
    n = min(w.numel() for w in waves)
    assert waves[0].numel() != waves[1].numel() or _max_diff(waves[0][:n], waves[1][:n]) > 0.01
