"""Beam search for one request, run as ``num_beams`` rows of the shared batch.

It reproduces transformers 5's vectorised beam search (``GenerationMixin._beam_search``)
for a batch of one: keep the top ``max(2, 1 + #eos) * num_beams`` continuations, let
those that hit EOS or the length limit compete for the finished set with the length
penalty ``score / generated_len ** length_penalty``, continue with the best unfinished
ones, and stop by the same early-stopping heuristic. The arithmetic (float32 scores,
the ``-1e9`` sentinels, ``topk`` over the same shapes) is kept alike, so ties and
near-ties resolve the same way and the results match ``generate()`` token for token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from modelwire_server.engine.types import TokenInfo

_SENTINEL = -1.0e9


@dataclass(slots=True)
class Hypothesis:
    tokens: list[int] = field(default_factory=list)
    infos: list[TokenInfo] = field(default_factory=list)


@dataclass(slots=True)
class BeamStep:
    """The new running beams: beam ``k`` continues beam ``sources[k]`` with ``tokens[k]``."""

    tokens: list[int]
    sources: list[int]
    done: bool


class BeamSearch:
    def __init__(
        self,
        *,
        num_beams: int,
        max_new_tokens: int,
        length_penalty: float,
        early_stopping: bool | str,
        eos_ids: list[int],
    ) -> None:
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.eos = torch.tensor(eos_ids, dtype=torch.long)
        self.keep = max(2, 1 + len(eos_ids)) * num_beams
        self.top_mask = torch.arange(self.keep) < num_beams
        # Only beam 0 is live at first: the others are copies of it.
        self.running_scores = torch.full((1, num_beams), _SENTINEL)
        self.running_scores[0, 0] = 0.0
        self.running = [Hypothesis() for _ in range(num_beams)]
        self.finished_scores = torch.full((1, num_beams), _SENTINEL)
        self.finished: list[Hypothesis | None] = [None] * num_beams
        self.finished_flags = torch.zeros((1, num_beams), dtype=torch.bool)
        self.unsatisfied = torch.ones((1, 1), dtype=torch.bool)
        self.generated = 0

    def step(
        self, logprobs: torch.Tensor, info: Callable[[int, int], TokenInfo] | None
    ) -> BeamStep:
        """Advance by one token. ``logprobs`` is ``[num_beams, V]`` (processed);
        ``info(beam, token)`` describes a chosen token when token details are wanted."""
        vocab = logprobs.shape[-1]
        scores = logprobs.float().cpu() + self.running_scores[0, :, None]
        top_lp, top_idx = torch.topk(scores.reshape(1, -1), k=self.keep)
        sources, tokens = top_idx // vocab, top_idx % vocab
        hits = torch.isin(tokens, self.eos) | (self.generated + 1 >= self.max_new_tokens)
        candidates = [
            self._extend(self.running[s], s, t, info)
            for s, t in zip(sources[0].tolist(), tokens[0].tolist(), strict=True)
        ]
        nxt = self._next_running(top_lp, hits)
        self._update_finished(top_lp, hits, candidates)
        self.running = [candidates[i] for i in nxt]
        self.generated += 1
        self._update_heuristic()
        done = not bool(
            self.unsatisfied.any()
            & ~(self.finished_flags.all() & (self.early_stopping is True))
            & ~hits.all()
        )
        return BeamStep(
            tokens=[int(tokens[0, i]) for i in nxt],
            sources=[int(sources[0, i]) for i in nxt],
            done=done,
        )

    @staticmethod
    def _extend(
        hyp: Hypothesis, source: int, token: int, info: Callable[[int, int], TokenInfo] | None
    ) -> Hypothesis:
        return Hypothesis(
            tokens=[*hyp.tokens, token],
            infos=[*hyp.infos, info(source, token)] if info is not None else [],
        )

    def _next_running(self, top_lp: torch.Tensor, hits: torch.Tensor) -> list[int]:
        running_lp = top_lp + hits.to(torch.float32) * _SENTINEL
        order = torch.topk(running_lp, k=self.num_beams)[1]
        self.running_scores = running_lp.gather(1, order)
        return order[0].tolist()

    def _update_finished(
        self, top_lp: torch.Tensor, hits: torch.Tensor, candidates: list[Hypothesis]
    ) -> None:
        just_finished = hits & self.top_mask[None, :]
        scores = top_lp / ((self.generated + 1) ** self.length_penalty)
        full = self.finished_flags.all(dim=-1, keepdim=True) & (self.early_stopping is True)
        scores += full.to(torch.float32) * _SENTINEL
        scores += (~self.unsatisfied).to(torch.float32) * _SENTINEL
        scores += (~just_finished) * _SENTINEL
        merged_scores = torch.cat((self.finished_scores, scores), dim=1)
        merged: list[Hypothesis | None] = [*self.finished, *candidates]
        merged_flags = torch.cat((self.finished_flags, just_finished), dim=1)
        order = torch.topk(merged_scores, k=self.num_beams)[1]
        self.finished_scores = merged_scores.gather(1, order)
        self.finished_flags = merged_flags.gather(1, order)
        self.finished = [merged[i] for i in order[0].tolist()]

    def _update_heuristic(self) -> None:
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best_len = self.max_new_tokens
        else:
            best_len = self.generated
        best_running = self.running_scores[:, :1] / (best_len**self.length_penalty)
        worst_finished = torch.where(
            self.finished_flags,
            torch.min(self.finished_scores, dim=1, keepdim=True)[0],
            torch.tensor(_SENTINEL),
        )
        self.unsatisfied = self.unsatisfied & torch.any(
            best_running > worst_finished, dim=-1, keepdim=True
        )

    def results(self, n: int) -> list[Hypothesis]:
        """The ``n`` best finished hypotheses, best first.

        Before the search is done (time limit), running beams scored with the length
        penalty at their current length fill in for slots no hypothesis has finished.
        """
        best: list[tuple[float, Hypothesis]] = [
            (float(s), h)
            for s, h, f in zip(
                self.finished_scores[0].tolist(),
                self.finished,
                self.finished_flags[0].tolist(),
                strict=True,
            )
            if h is not None and f
        ]
        if len(best) < n and self.generated:
            norm = self.generated**self.length_penalty
            for s, h in zip(self.running_scores[0].tolist(), self.running, strict=True):
                best.append((s / norm, h))
        best.sort(key=lambda pair: pair[0], reverse=True)
        return [h for _, h in best[:n]]
