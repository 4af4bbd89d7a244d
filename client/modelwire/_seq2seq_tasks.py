"""AsyncClient methods of the encoder-decoder tasks (summarization, translation): request
builders, the ``GeneratedText`` result, and the methods.

Their sampling and stopping keywords are ``generate``'s, checked by the same code; the
output options (logprobs, echoed prompts, ...) are ``generate``'s alone, and so is
``n > 1``: these RPCs answer one text per input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

from modelwire import _validation as check
from modelwire._generation import _FINISH_REASONS, generate_request
from modelwire._mixin import TaskMethods
from modelwire._types import FinishReason, ResultList
from modelwire.v1 import common_pb2
from modelwire.v1 import inference_service_pb2 as pb


class TextGenerationParams(TypedDict, total=False):
    """Sampling and stopping keywords of ``summarize`` and ``translate``; as in
    ``GenerateParams``, each one left out takes the model's ``generation_config``."""

    temperature: float | None
    top_k: int | None
    top_p: float | None
    min_p: float | None
    typical_p: float | None
    repetition_penalty: float | None
    presence_penalty: float | None
    frequency_penalty: float | None
    seed: int | None
    logit_bias: Mapping[int, float] | None
    num_beams: int | None
    length_penalty: float | None
    #: Must be 1 (or unset): one text per input.
    n: int | None
    max_new_tokens: int | None
    min_new_tokens: int | None
    stop: str | Sequence[str] | None
    stop_token_ids: Sequence[int] | None
    ignore_eos: bool | None
    include_stop_in_output: bool | None
    time_limit_ms: int | None


_PARAMS = frozenset(TextGenerationParams.__annotations__)


@dataclass(frozen=True)
class GeneratedText:
    """One input's generated text (a summary, a translation)."""

    text: str
    finish_reason: FinishReason | None
    """Why it ended: EOS, LENGTH (``max_new_tokens``), STOP_SEQUENCE, TIME_LIMIT."""
    generated_tokens: int


def _parameters(
    params: TextGenerationParams,
) -> tuple[common_pb2.SamplingParameters, common_pb2.StoppingParameters]:
    unknown = params.keys() - _PARAMS
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    n = params.get("n")
    if n is not None and n != 1:
        raise ValueError(f"`n` must be 1 (one text per input; use generate for more), got {n}")
    request = generate_request("", None, None, params)  # type: ignore[arg-type]
    return request.sampling, request.stopping


def summarize_request(
    inputs: str | Sequence[str], *, model: str | None, params: TextGenerationParams
) -> pb.SummarizeRequest:
    sampling, stopping = _parameters(params)
    return pb.SummarizeRequest(
        model=check.optional_str("model", model),
        inputs=check.texts("inputs", inputs),
        sampling=sampling,
        stopping=stopping,
    )


def translate_request(
    inputs: str | Sequence[str],
    *,
    target_language: str,
    source_language: str | None,
    model: str | None,
    params: TextGenerationParams,
) -> pb.TranslateRequest:
    sampling, stopping = _parameters(params)
    if not isinstance(target_language, str) or not target_language:
        raise ValueError("`target_language` must be a non-empty string, e.g. 'fr'")
    request = pb.TranslateRequest(
        model=check.optional_str("model", model),
        inputs=check.texts("inputs", inputs),
        target_language=target_language,
        sampling=sampling,
        stopping=stopping,
    )
    if source_language is not None:
        if not isinstance(source_language, str) or not source_language:
            raise ValueError("`source_language` must be a non-empty string or None")
        request.source_language = source_language
    return request


def generated_texts(results: Sequence[common_pb2.GeneratedText]) -> list[GeneratedText]:
    return [
        GeneratedText(r.text, _FINISH_REASONS.get(r.finish_reason), r.generated_tokens)
        for r in results
    ]


class Seq2SeqTaskMethods(TaskMethods):
    """Mixed into AsyncClient."""

    async def summarize(
        self,
        inputs: str | Sequence[str],
        *,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **params: Unpack[TextGenerationParams],
    ) -> ResultList[GeneratedText]:
        """Summarize texts (summarization); one ``GeneratedText`` per input, in order.

        The inputs decode together on the server, with other calls' inputs. ``params``
        are ``generate``'s sampling and stopping keywords (``num_beams=4``,
        ``max_new_tokens=60``, ...), checked here before anything is sent.
        """
        request = summarize_request(inputs, model=model, params=params)
        response, rid = await self._unary(
            lambda s: s.inference.Summarize, request, timeout, request_id
        )
        return ResultList(generated_texts(response.results), request_id=rid)

    async def translate(
        self,
        inputs: str | Sequence[str],
        *,
        target_language: str,
        source_language: str | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **params: Unpack[TextGenerationParams],
    ) -> ResultList[GeneratedText]:
        """Translate texts (translation) into ``target_language``; one result per input.

        Language codes are the model's: ``"fr"`` for T5-style prefixes and M2M100
        (``eng_Latn``-style for NLLB). Multilingual models need ``source_language``; a
        pair the model cannot do is a ``BadRequestError`` naming the field. ``params``
        are as in ``summarize``.
        """
        request = translate_request(
            inputs,
            target_language=target_language,
            source_language=source_language,
            model=model,
            params=params,
        )
        response, rid = await self._unary(
            lambda s: s.inference.Translate, request, timeout, request_id
        )
        return ResultList(generated_texts(response.results), request_id=rid)
