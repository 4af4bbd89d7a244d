from modelwire.v1 import common_pb2 as _common_pb2
from modelwire.v1 import generate_pb2 as _generate_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreFunction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORE_FUNCTION_UNSPECIFIED: _ClassVar[ScoreFunction]
    SCORE_FUNCTION_SOFTMAX: _ClassVar[ScoreFunction]
    SCORE_FUNCTION_SIGMOID: _ClassVar[ScoreFunction]
    SCORE_FUNCTION_NONE: _ClassVar[ScoreFunction]

class AggregationStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_STRATEGY_UNSPECIFIED: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_NONE: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_SIMPLE: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_FIRST: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_AVERAGE: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_MAX: _ClassVar[AggregationStrategy]

class Pooling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_UNSPECIFIED: _ClassVar[Pooling]
    POOLING_MEAN: _ClassVar[Pooling]
    POOLING_CLS: _ClassVar[Pooling]
    POOLING_NONE: _ClassVar[Pooling]

class TimestampGranularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIMESTAMP_GRANULARITY_UNSPECIFIED: _ClassVar[TimestampGranularity]
    TIMESTAMP_GRANULARITY_SEGMENT: _ClassVar[TimestampGranularity]
    TIMESTAMP_GRANULARITY_WORD: _ClassVar[TimestampGranularity]
    TIMESTAMP_GRANULARITY_CHAR: _ClassVar[TimestampGranularity]

class AudioFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_FORMAT_UNSPECIFIED: _ClassVar[AudioFormat]
    AUDIO_FORMAT_WAV_PCM16: _ClassVar[AudioFormat]
    AUDIO_FORMAT_WAV_FLOAT32: _ClassVar[AudioFormat]
    AUDIO_FORMAT_PCM_FLOAT32: _ClassVar[AudioFormat]
SCORE_FUNCTION_UNSPECIFIED: ScoreFunction
SCORE_FUNCTION_SOFTMAX: ScoreFunction
SCORE_FUNCTION_SIGMOID: ScoreFunction
SCORE_FUNCTION_NONE: ScoreFunction
AGGREGATION_STRATEGY_UNSPECIFIED: AggregationStrategy
AGGREGATION_STRATEGY_NONE: AggregationStrategy
AGGREGATION_STRATEGY_SIMPLE: AggregationStrategy
AGGREGATION_STRATEGY_FIRST: AggregationStrategy
AGGREGATION_STRATEGY_AVERAGE: AggregationStrategy
AGGREGATION_STRATEGY_MAX: AggregationStrategy
POOLING_UNSPECIFIED: Pooling
POOLING_MEAN: Pooling
POOLING_CLS: Pooling
POOLING_NONE: Pooling
TIMESTAMP_GRANULARITY_UNSPECIFIED: TimestampGranularity
TIMESTAMP_GRANULARITY_SEGMENT: TimestampGranularity
TIMESTAMP_GRANULARITY_WORD: TimestampGranularity
TIMESTAMP_GRANULARITY_CHAR: TimestampGranularity
AUDIO_FORMAT_UNSPECIFIED: AudioFormat
AUDIO_FORMAT_WAV_PCM16: AudioFormat
AUDIO_FORMAT_WAV_FLOAT32: AudioFormat
AUDIO_FORMAT_PCM_FLOAT32: AudioFormat

class ClassifyTextRequest(_message.Message):
    __slots__ = ("model", "inputs", "top_k", "function_to_apply")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_TO_APPLY_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    function_to_apply: ScoreFunction
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., function_to_apply: _Optional[_Union[ScoreFunction, str]] = ...) -> None: ...

class ClassifyTextResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.Classification]
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.Classification, _Mapping]]] = ...) -> None: ...

class ClassifyZeroShotRequest(_message.Message):
    __slots__ = ("model", "inputs", "candidate_labels", "hypothesis_template", "multi_label")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_LABELS_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESIS_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    MULTI_LABEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    candidate_labels: _containers.RepeatedScalarFieldContainer[str]
    hypothesis_template: str
    multi_label: bool
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., candidate_labels: _Optional[_Iterable[str]] = ..., hypothesis_template: _Optional[str] = ..., multi_label: _Optional[bool] = ...) -> None: ...

class ClassifyZeroShotResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.Classification]
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.Classification, _Mapping]]] = ...) -> None: ...

class FillMaskRequest(_message.Message):
    __slots__ = ("model", "inputs", "top_k", "targets")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    targets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., targets: _Optional[_Iterable[str]] = ...) -> None: ...

class MaskCandidate(_message.Message):
    __slots__ = ("token_id", "token", "sequence", "score")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token: str
    sequence: str
    score: float
    def __init__(self, token_id: _Optional[int] = ..., token: _Optional[str] = ..., sequence: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class MaskFill(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[MaskCandidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[MaskCandidate, _Mapping]]] = ...) -> None: ...

class FillMaskResult(_message.Message):
    __slots__ = ("masks",)
    MASKS_FIELD_NUMBER: _ClassVar[int]
    masks: _containers.RepeatedCompositeFieldContainer[MaskFill]
    def __init__(self, masks: _Optional[_Iterable[_Union[MaskFill, _Mapping]]] = ...) -> None: ...

class FillMaskResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FillMaskResult]
    def __init__(self, results: _Optional[_Iterable[_Union[FillMaskResult, _Mapping]]] = ...) -> None: ...

class RecognizeEntitiesRequest(_message.Message):
    __slots__ = ("model", "inputs", "aggregation_strategy")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    aggregation_strategy: AggregationStrategy
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., aggregation_strategy: _Optional[_Union[AggregationStrategy, str]] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("label", "score", "word", "start", "end", "index")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    word: str
    start: int
    end: int
    index: int
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., word: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class EntityList(_message.Message):
    __slots__ = ("entities",)
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ...) -> None: ...

class RecognizeEntitiesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EntityList]
    def __init__(self, results: _Optional[_Iterable[_Union[EntityList, _Mapping]]] = ...) -> None: ...

class AnswerQuestionRequest(_message.Message):
    __slots__ = ("model", "question", "context", "top_k", "max_answer_length", "handle_impossible_answer", "doc_stride")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_ANSWER_LENGTH_FIELD_NUMBER: _ClassVar[int]
    HANDLE_IMPOSSIBLE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    DOC_STRIDE_FIELD_NUMBER: _ClassVar[int]
    model: str
    question: str
    context: str
    top_k: int
    max_answer_length: int
    handle_impossible_answer: bool
    doc_stride: int
    def __init__(self, model: _Optional[str] = ..., question: _Optional[str] = ..., context: _Optional[str] = ..., top_k: _Optional[int] = ..., max_answer_length: _Optional[int] = ..., handle_impossible_answer: _Optional[bool] = ..., doc_stride: _Optional[int] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("text", "score", "start", "end")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    text: str
    score: float
    start: int
    end: int
    def __init__(self, text: _Optional[str] = ..., score: _Optional[float] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class AnswerQuestionResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[Answer]
    def __init__(self, answers: _Optional[_Iterable[_Union[Answer, _Mapping]]] = ...) -> None: ...

class SummarizeRequest(_message.Message):
    __slots__ = ("model", "inputs", "sampling", "stopping")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    sampling: _common_pb2.SamplingParameters
    stopping: _common_pb2.StoppingParameters
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParameters, _Mapping]] = ..., stopping: _Optional[_Union[_common_pb2.StoppingParameters, _Mapping]] = ...) -> None: ...

class SummarizeResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.GeneratedText]
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.GeneratedText, _Mapping]]] = ...) -> None: ...

class TranslateRequest(_message.Message):
    __slots__ = ("model", "inputs", "source_language", "target_language", "sampling", "stopping")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    source_language: str
    target_language: str
    sampling: _common_pb2.SamplingParameters
    stopping: _common_pb2.StoppingParameters
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., source_language: _Optional[str] = ..., target_language: _Optional[str] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParameters, _Mapping]] = ..., stopping: _Optional[_Union[_common_pb2.StoppingParameters, _Mapping]] = ...) -> None: ...

class TranslateResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.GeneratedText]
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.GeneratedText, _Mapping]]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "inputs", "pooling", "normalize", "truncate")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    pooling: Pooling
    normalize: bool
    truncate: bool
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., normalize: _Optional[bool] = ..., truncate: _Optional[bool] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "token_vectors", "token_count", "truncated")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_VECTORS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    token_vectors: _containers.RepeatedCompositeFieldContainer[Vector]
    token_count: int
    truncated: bool
    def __init__(self, values: _Optional[_Iterable[float]] = ..., token_vectors: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., token_count: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings",)
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ...) -> None: ...

class ClassifyImageRequest(_message.Message):
    __slots__ = ("model", "images", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    top_k: int
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., top_k: _Optional[int] = ...) -> None: ...

class ClassifyImageResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.Classification]
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.Classification, _Mapping]]] = ...) -> None: ...

class DetectObjectsRequest(_message.Message):
    __slots__ = ("model", "images", "threshold")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    threshold: float
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., threshold: _Optional[float] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("xmin", "ymin", "xmax", "ymax")
    XMIN_FIELD_NUMBER: _ClassVar[int]
    YMIN_FIELD_NUMBER: _ClassVar[int]
    XMAX_FIELD_NUMBER: _ClassVar[int]
    YMAX_FIELD_NUMBER: _ClassVar[int]
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    def __init__(self, xmin: _Optional[float] = ..., ymin: _Optional[float] = ..., xmax: _Optional[float] = ..., ymax: _Optional[float] = ...) -> None: ...

class DetectedObject(_message.Message):
    __slots__ = ("label", "score", "box")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    box: BoundingBox
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., box: _Optional[_Union[BoundingBox, _Mapping]] = ...) -> None: ...

class Detections(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[DetectedObject]
    def __init__(self, objects: _Optional[_Iterable[_Union[DetectedObject, _Mapping]]] = ...) -> None: ...

class DetectObjectsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Detections]
    def __init__(self, results: _Optional[_Iterable[_Union[Detections, _Mapping]]] = ...) -> None: ...

class CaptionImageRequest(_message.Message):
    __slots__ = ("model", "images", "prompt", "sampling", "stopping")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    prompt: str
    sampling: _common_pb2.SamplingParameters
    stopping: _common_pb2.StoppingParameters
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParameters, _Mapping]] = ..., stopping: _Optional[_Union[_common_pb2.StoppingParameters, _Mapping]] = ...) -> None: ...

class CaptionImageResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.GeneratedText]
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.GeneratedText, _Mapping]]] = ...) -> None: ...

class TranscribeAudioRequest(_message.Message):
    __slots__ = ("model", "clips", "chunk_length_s", "return_timestamps", "language")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLIPS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_LENGTH_S_FIELD_NUMBER: _ClassVar[int]
    RETURN_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    clips: _containers.RepeatedCompositeFieldContainer[_common_pb2.Audio]
    chunk_length_s: float
    return_timestamps: TimestampGranularity
    language: str
    def __init__(self, model: _Optional[str] = ..., clips: _Optional[_Iterable[_Union[_common_pb2.Audio, _Mapping]]] = ..., chunk_length_s: _Optional[float] = ..., return_timestamps: _Optional[_Union[TimestampGranularity, str]] = ..., language: _Optional[str] = ...) -> None: ...

class TimedChunk(_message.Message):
    __slots__ = ("text", "start_s", "end_s")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    text: str
    start_s: float
    end_s: float
    def __init__(self, text: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ...) -> None: ...

class Transcription(_message.Message):
    __slots__ = ("text", "chunks")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    text: str
    chunks: _containers.RepeatedCompositeFieldContainer[TimedChunk]
    def __init__(self, text: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[TimedChunk, _Mapping]]] = ...) -> None: ...

class TranscribeAudioResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Transcription]
    def __init__(self, results: _Optional[_Iterable[_Union[Transcription, _Mapping]]] = ...) -> None: ...

class ClassifyAudioRequest(_message.Message):
    __slots__ = ("model", "clips", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLIPS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    clips: _containers.RepeatedCompositeFieldContainer[_common_pb2.Audio]
    top_k: int
    def __init__(self, model: _Optional[str] = ..., clips: _Optional[_Iterable[_Union[_common_pb2.Audio, _Mapping]]] = ..., top_k: _Optional[int] = ...) -> None: ...

class ClassifyAudioResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.Classification]
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.Classification, _Mapping]]] = ...) -> None: ...

class SynthesizeSpeechRequest(_message.Message):
    __slots__ = ("model", "text", "voice", "seed", "format")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: str
    text: str
    voice: str
    seed: int
    format: AudioFormat
    def __init__(self, model: _Optional[str] = ..., text: _Optional[str] = ..., voice: _Optional[str] = ..., seed: _Optional[int] = ..., format: _Optional[_Union[AudioFormat, str]] = ...) -> None: ...

class SynthesizeSpeechResponse(_message.Message):
    __slots__ = ("audio", "sample_rate", "format", "num_samples")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    sample_rate: int
    format: AudioFormat
    num_samples: int
    def __init__(self, audio: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., format: _Optional[_Union[AudioFormat, str]] = ..., num_samples: _Optional[int] = ...) -> None: ...
