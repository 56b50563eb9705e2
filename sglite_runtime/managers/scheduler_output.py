"""The output processor: a step's ``StepResult`` → request updates, KV hand-back and messages.

The scheduler decides what runs; ``ModelWorker.forward_and_sample`` runs it; this class appends
the sampled tokens, decides which requests finished, hands finished requests' KV back through
``release_req_kv``, jumps constrained requests forward, and queues the stream messages. It
returns what the scheduler must do with the batch (``BatchOutcome``) instead of editing the
scheduler's queues itself.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch

from sglite_runtime.managers.io_struct import BatchTokenIDOut, FinishAbort, FinishLength, FinishReason, FinishStop
from sglite_runtime.mem_cache.kv_release import release_req_kv
from sglite_runtime.sampling.stop import match_stop_text

if TYPE_CHECKING:
    from sglite_runtime.managers.schedule_batch import Req, ScheduleBatch
    from sglite_runtime.mem_cache.radix_cache import RadixCache
    from sglite_runtime.model_executor.model_worker import StepResult
    from sglite_runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

# A jump costs one extra extend step of the request (about two decode steps on a CPU), so a
# shorter forced run is cheaper to decode token by token.
MIN_JUMP_TOKENS = 3


def internal_error(exc: BaseException) -> FinishAbort:
    """The finish reason of a request that failed on a server error (the client gets a 500)."""
    return FinishAbort(f"Internal error while running this request: {exc!r}", status_code=500)


def abort_reason(r: "Req") -> FinishReason:
    """Why an aborted request ended: its recorded error, else the abort's message."""
    return r.error_reason or FinishAbort(r.to_abort_message or "Abort")


@dataclass
class BatchOutcome:
    """What the scheduler must do with a batch after its result was processed."""

    running: "ScheduleBatch | None" = None  # an extend's requests that go on decoding
    requeue: "list[Req]" = field(default_factory=list)  # jumped forward: to the queue's front
    chunked_done: bool = False  # the chunked request finished mid-prefill (aborted)


class SchedulerOutputProcessor:
    """Turns step results into request state and ``BatchTokenIDOut`` messages.

    Args:
        server_args: read for ``--stream-interval``.
        tokenizer: decodes output tails for stop strings.
        context_len: a request reaching it finishes with ``length``.
        tree_cache: where finished requests' KV goes (``release_req_kv``).
        grammar_manager: accepts constrained tokens, gives forced runs (None: no grammars).
        stats: the scheduler's counters (``generation_tokens`` is counted here).
        pending_outputs: where messages are queued for the event loop.
    """

    def __init__(self, server_args: "ServerArgs", tokenizer: Any, context_len: int, tree_cache: "RadixCache",
                 grammar_manager: Any, stats: dict[str, int], pending_outputs: "deque[BatchTokenIDOut]"):
        self.server_args = server_args
        self.tokenizer = tokenizer
        self.context_len = context_len
        self.tree_cache = tree_cache
        self.grammar_manager = grammar_manager
        self.stats = stats
        self.pending_outputs = pending_outputs
        self.num_jump_forward_tokens = 0

    # ---- extend --------------------------------------------------------------------------
    def process_extend_result(self, batch: "ScheduleBatch", res: "StepResult") -> BatchOutcome:
        if res.input_logprob_spans:
            self._collect_input_logprobs(batch, res)
        next_ids = res.next_token_ids_list()
        outcome = BatchOutcome()
        keep: list[int] = []
        for i, r in enumerate(batch.reqs):
            if r.is_chunked:
                self.tree_cache.cache_unfinished_req(r)
                if r.to_abort:
                    self.finish_without_output(
                        r, r.error_reason or FinishAbort("Abort before prefill finished"))
                    outcome.chunked_done = True
                continue
            carried, r.decode_in_extend = r.decode_in_extend, False  # --enable-mixed-chunk
            if r.sampling_params.max_new_tokens == 0 or r.to_abort:
                reason: FinishReason = ((r.error_reason or FinishAbort("Abort")) if r.to_abort
                                        else FinishLength(length=0))
                self.finish_without_output(r, reason)
                continue
            self._append_and_check(r, next_ids[i], res, res.logits, i)
            if r.finished():
                release_req_kv(self.tree_cache, r, r.seqlen - 1, cache=True)
            else:
                if not carried:  # a running request's KV stays its own, as in a decode step
                    self.tree_cache.cache_unfinished_req(r)
                if not self._jump_forward(r):
                    keep.append(i)
                elif not r.finished():
                    outcome.requeue.append(r)
        self.stream_output(batch.reqs)
        if keep:
            batch.output_ids = res.next_token_ids.to(torch.int64)
            batch.filter_batch(keep)
            outcome.running = batch
        return outcome

    def _collect_input_logprobs(self, batch: "ScheduleBatch", res: "StepResult") -> None:
        for i, (lo, hi, first_pos) in res.input_logprob_spans.items():
            try:
                self._input_logprobs_one(batch.reqs[i], res.input_logprobs, lo, hi, first_pos)
            except Exception as e:  # this request fails alone (finished by the extend loop)
                self.fail_req(batch.reqs[i], e)

    def _input_logprobs_one(self, r: "Req", logprobs: torch.Tensor | None, lo: int, hi: int, first_pos: int) -> None:
        assert logprobs is not None  # a step with input-logprob spans computed them
        ids = r.origin_input_ids
        if r.input_token_logprobs is None:
            r.input_token_logprobs, r.input_top_logprobs = [], []
            if r.logprob_start_len == 0:
                r.input_token_logprobs.append((None, ids[0]))
                r.input_top_logprobs.append(None)
        qs = [q for q in range(first_pos, first_pos + hi - lo) if q + 1 < len(ids)]
        if not qs:
            return
        row_idx = torch.tensor([lo + q - first_pos for q in qs], device=logprobs.device)
        tok = torch.tensor([ids[q + 1] for q in qs], device=logprobs.device)
        vals = logprobs[row_idx].gather(1, tok[:, None]).squeeze(1).tolist()
        r.input_token_logprobs.extend(zip(vals, tok.tolist()))
        assert r.input_top_logprobs is not None  # started with input_token_logprobs
        if r.top_logprobs_num > 0:
            tv, ti = logprobs[row_idx].topk(r.top_logprobs_num, dim=-1)
            r.input_top_logprobs.extend([list(zip(a, b)) for a, b in zip(tv.tolist(), ti.tolist())])
        else:
            r.input_top_logprobs.extend([None] * len(qs))

    # ---- decode --------------------------------------------------------------------------
    def process_decode_result(self, batch: "ScheduleBatch", res: "StepResult") -> BatchOutcome:
        """Append each request's token; finished and jumped-forward requests leave ``batch``."""
        next_ids = res.next_token_ids_list()
        outcome = BatchOutcome()
        keep: list[int] = []
        for i, r in enumerate(batch.reqs):
            self._append_and_check(r, next_ids[i], res, res.logits, i)
            if r.finished():
                release_req_kv(self.tree_cache, r, r.seqlen - 1, cache=True)
            elif not self._jump_forward(r):
                keep.append(i)
            elif not r.finished():
                outcome.requeue.append(r)
        self.stream_output(batch.reqs)
        batch.output_ids = res.next_token_ids.to(torch.int64)
        batch.filter_batch(keep)
        return outcome

    def process_decode_rows(self, reqs: "list[Req]", res: "StepResult", kv_extra: int) -> None:
        """Overlap scheduling: step N's host work while step N+1 (which holds these same
        requests) runs. Finished requests release ``kv_extra`` more slots (N+1's); the batch is
        filtered only once N+1 is back. No grammars here (they run sequentially)."""
        next_ids = res.next_token_ids_list()
        for i, r in enumerate(reqs):
            self._append_and_check(r, next_ids[i], res, res.logits, i)
            if r.finished():
                release_req_kv(self.tree_cache, r, r.seqlen - 1 + kv_extra, cache=True)
        self.stream_output(reqs)

    def _append_and_check(self, r: "Req", token: int, out: Any, logits: torch.Tensor, i: int) -> None:
        """Append the sampled token and decide whether ``r`` is finished; an exception here
        (logprobs, grammar, stop matching) finishes ``r`` alone with a 500, never the batch."""
        try:
            self._append_token(r, token, out, logits, i)
            self.check_finished(r)
        except Exception as e:  # the token was appended first, so the KV bookkeeping holds
            self.fail_req(r, e)
            r.finished_reason = r.error_reason

    def fail_req(self, r: "Req", exc: BaseException) -> None:
        """Mark ``r`` to finish with a server error naming ``exc`` (released by the normal path)."""
        logger.error("request %s failed: %r", r.rid, exc, exc_info=exc)
        r.to_abort = True
        r.error_reason = internal_error(exc)

    def _append_token(self, r: "Req", token: int, out: Any, logits: torch.Tensor, i: int) -> None:
        r.output_ids.append(token)
        self.stats["generation_tokens"] += 1
        if r.grammar is not None:
            self.grammar_manager.accept(r, token)
        if r.return_logprob:
            lp = float(out.next_token_logprobs[i])
            r.output_token_logprobs.append((lp, token))
            if r.top_logprobs_num > 0:
                row = torch.log_softmax(logits[i].float(), dim=-1)
                tv, ti = row.topk(r.top_logprobs_num)
                r.output_top_logprobs.append(list(zip(tv.tolist(), ti.tolist())))

    def _jump_forward(self, r: "Req") -> bool:
        """Append the tokens the grammar forces; the request then leaves its batch.

        Its computed KV goes to the radix tree first, so the re-prefill only computes the
        forced tokens. Returns True when the request left the running batch (finished, or to
        be requeued as an extend by the scheduler).
        """
        if r.grammar is None or self.grammar_manager is None:
            return False
        assert r.sampling_params.max_new_tokens is not None  # request validation fills it in
        budget = r.sampling_params.max_new_tokens - len(r.output_ids) - 1
        forced = self.grammar_manager.forced_tokens(r)[: max(budget, 0)]
        if len(forced) < MIN_JUMP_TOKENS:
            return False
        release_req_kv(self.tree_cache, r, r.seqlen - 1, cache=True)  # every token that has KV
        for t in forced:
            r.output_ids.append(t)
            self.grammar_manager.accept(r, t)
        self.stats["generation_tokens"] += len(forced)
        if r.return_logprob:  # forced tokens have probability 1 under the constraint
            r.output_token_logprobs.extend((0.0, t) for t in forced)
            if r.top_logprobs_num > 0:
                r.output_top_logprobs.extend([(0.0, t)] for t in forced)  # one (logprob, id) pair per position
        self.num_jump_forward_tokens += len(forced)
        if r.to_abort or r.grammar.is_terminated():
            # Done without another forward; its KV was already released above.
            r.finished_reason = abort_reason(r) if r.to_abort else FinishStop(matched=None)
        return True

    def finish_without_output(self, r: "Req", reason: FinishReason) -> None:
        """Release a request whose row holds KV for exactly ``fill_ids`` (no sampled token)."""
        r.finished_reason = reason
        release_req_kv(self.tree_cache, r, len(r.fill_ids), cache=True)

    # ---- finish --------------------------------------------------------------------------
    def check_finished(self, r: "Req") -> None:
        sp = r.sampling_params
        last = r.output_ids[-1]
        if r.to_abort:
            r.finished_reason = abort_reason(r)
        elif last in (sp.stop_token_ids or ()) or (not sp.ignore_eos and last in r.eos_token_ids):
            r.finished_reason = FinishStop(matched=last)
        elif r.grammar is not None and r.grammar.is_terminated():
            r.finished_reason = FinishStop(matched=None)
        elif len(r.output_ids) >= cast(int, sp.max_new_tokens):  # set by request validation
            r.finished_reason = FinishLength(length=cast(int, sp.max_new_tokens))
        elif sp.stop or sp.stop_regex:
            r.finished_reason = match_stop_text(sp, r.output_ids, self._decode_for_stop)
        if r.finished_reason is None and r.seqlen >= self.context_len:
            r.finished_reason = FinishLength(length=len(r.output_ids))

    def _decode_for_stop(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- outputs -------------------------------------------------------------------------
    def stream_output(self, reqs: list["Req"]) -> None:
        # --stream-interval k: a streaming request is sent its first token at once, then every k.
        interval = self.server_args.stream_interval
        entries = []
        for r in reqs:
            if r.finish_sent:
                continue
            new = len(r.output_ids) - r.sent_len
            if r.finished() or (r.stream and new > 0 and (r.sent_len == 0 or new >= interval)):
                entries.append(r)
                r.finish_sent = r.finished()
        if not entries:
            return
        out = BatchTokenIDOut([], [], [], [], [], [], [], [], [], [], [], [])
        for r in entries:
            s = r.sent_len
            out.rids.append(r.rid)
            out.new_token_ids.append(r.output_ids[s:])
            out.finished_reasons.append(r.finished_reason)
            out.prompt_tokens.append(len(r.origin_input_ids))
            out.completion_tokens.append(len(r.output_ids))
            out.cached_tokens.append(r.cached_tokens)
            out.skip_special_tokens.append(r.sampling_params.skip_special_tokens)
            out.no_stop_trim.append(r.sampling_params.no_stop_trim)
            out.spaces_between_special_tokens.append(r.sampling_params.spaces_between_special_tokens)
            out.output_token_logprobs.append(r.output_token_logprobs[s:] if r.return_logprob else None)
            out.output_top_logprobs.append(
                r.output_top_logprobs[s:] if r.return_logprob and r.top_logprobs_num > 0 else None)
            send_input = r.return_logprob and r.input_token_logprobs is not None and not r.input_logprobs_sent
            out.input_token_logprobs.append(r.input_token_logprobs if send_input else None)
            out.input_top_logprobs.append(r.input_top_logprobs if send_input else None)
            if send_input:
                r.input_logprobs_sent = True
            r.sent_len = len(r.output_ids)
        self.pending_outputs.append(out)

    def single_output(self, rid: str, ids: list[int], reason: FinishReason | None, prompt: int, completion: int,
                       cached: int) -> BatchTokenIDOut:
        return BatchTokenIDOut([rid], [ids], [reason], [prompt], [completion], [cached], [True], [False],
                               [None], [None], [None], [None])

