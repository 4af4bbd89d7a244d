"""The task table: task name → runner class, and which tasks each RPC serves.

Adding a task is one module and one line here.
"""

from __future__ import annotations

import importlib

from modelwire_server.tasks.base import TaskRunner

# Task name → "module:Class", imported on first use so that a missing optional
# dependency of one task never stops the others from loading.
RUNNERS: dict[str, str] = {
    "sentiment-analysis": "text_classification:TextClassificationTask",
    "feature-extraction": "embedding:EmbeddingTask",
    "text-generation": "text_generation:TextGenerationTask",
    "image-classification": "image_classification:ImageClassificationTask",
    "object-detection": "object_detection:ObjectDetectionTask",
    "image-to-text": "image_to_text:ImageToTextTask",
    "automatic-speech-recognition": "speech_recognition:SpeechRecognitionTask",
    "audio-classification": "audio_classification:AudioClassificationTask",
    "text-to-speech": "text_to_speech:TextToSpeechTask",
    "zero-shot-classification": "zero_shot:ZeroShotTask",
    "fill-mask": "fill_mask:FillMaskTask",
    "ner": "ner:NerTask",
    "question-answering": "question_answering:QuestionAnsweringTask",
    "summarization": "seq2seq:SummarizationTask",
    "translation": "seq2seq:TranslationTask",
    "image-text-to-text": "image_text_to_text:ImageTextToTextTask",
}

# RPC → the tasks whose models can serve it; the first task's default model serves
# requests that leave `model` empty.
RPC_TASKS: dict[str, tuple[str, ...]] = {
    "Generate": ("text-generation", "image-text-to-text", "summarization", "translation"),
    "Tokenize": ("text-generation", "image-text-to-text", "summarization", "translation"),
    "ClassifyText": ("sentiment-analysis",),
    "ClassifyZeroShot": ("zero-shot-classification",),
    "FillMask": ("fill-mask",),
    "RecognizeEntities": ("ner",),
    "AnswerQuestion": ("question-answering",),
    "Summarize": ("summarization",),
    "Translate": ("translation",),
    "Embed": ("feature-extraction",),
    "ClassifyImage": ("image-classification",),
    "DetectObjects": ("object-detection",),
    "CaptionImage": ("image-to-text",),
    "TranscribeAudio": ("automatic-speech-recognition",),
    "ClassifyAudio": ("audio-classification",),
    "SynthesizeSpeech": ("text-to-speech",),
}


def runner_class(task: str) -> type[TaskRunner] | None:
    """The runner of ``task``, or None when this server does not implement it yet."""
    target = RUNNERS.get(task)
    if target is None:
        return None
    module_name, class_name = target.split(":")
    module = importlib.import_module(f"modelwire_server.tasks.{module_name}")
    return getattr(module, class_name)


def rpcs_of(task: str) -> list[str]:
    return [rpc for rpc, tasks in RPC_TASKS.items() if task in tasks]
