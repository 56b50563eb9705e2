"""The second half of a scheduler iteration: logits → samples → request updates → outputs.

Kept apart from scheduler.py so that each file holds one idea: that one decides what runs,
this one turns a forward's hidden states into tokens, finish decisions and stream messages.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from sglite_runtime.managers.io_struct import BatchTokenIDOut
from sglite_runtime.model_executor.forward_batch import ForwardBatch
from sglite_runtime.sampling.stop import match_stop_text

if TYPE_CHECKING:
    from sglite_runtime.managers.schedule_batch import Req, ScheduleBatch

logger = logging.getLogger(__name__)

# A jump costs one extra extend step of the request (about two decode steps on a CPU), so a
# shorter forced run is cheaper to decode token by token.
MIN_JUMP_TOKENS = 3


class SchedulerOutputMixin:
    # ---- forward inputs ------------------------------------------------------------------
    def build_forward_batch(self, batch: "ScheduleBatch") -> ForwardBatch:
        mr = self.model_runner
        fb = ForwardBatch(
            forward_mode=batch.forward_mode,
            batch_size=batch.batch_size(),
            input_ids=batch.input_ids,
            positions=batch.positions,
            out_cache_loc=batch.out_cache_loc,
            req_pool_indices=batch.req_pool_indices,
            seq_lens=batch.seq_lens,
            seq_lens_cpu=batch.seq_lens_cpu,
            req_to_token_pool=mr.req_to_token_pool,
            token_to_kv_pool=mr.token_to_kv_pool,
            attn_backend=mr.attn_backend,
        )
        if batch.forward_mode.is_extend():
            dev = self.device
            ext = torch.tensor(batch.extend_lens_cpu, dtype=torch.int64, device=dev)
            fb.extend_prefix_lens = torch.tensor(batch.prefix_lens_cpu, dtype=torch.int64, device=dev)
            fb.extend_seq_lens = ext
            fb.extend_start_loc = torch.cumsum(ext, 0) - ext
            fb.extend_prefix_lens_cpu = batch.prefix_lens_cpu
            fb.extend_seq_lens_cpu = batch.extend_lens_cpu
        return fb

    # ---- sampling ------------------------------------------------------------------------
    def _sample(self, batch: "ScheduleBatch", logits: torch.Tensor):
        from sglite_runtime.sampling.penalties import apply_penalties
        from sglite_runtime.sampling.sampling_batch_info import SamplingBatchInfo

        if batch.sampling_info is None:
            batch.sampling_info = SamplingBatchInfo.from_reqs(
                batch.reqs, self.vocab_size, self.device, eos_token_ids=sorted(self.eos_token_ids))
        info = batch.sampling_info
        if logits.shape[-1] > self.vocab_size:
            logits = logits[:, : self.vocab_size]
        if logits.is_inference():
            # Penalties and grammar masks update logits in place, which torch forbids on
            # inference tensors outside inference mode: work on a normal copy.
            logits = logits.clone()
        apply_penalties(logits, info)
        if self.grammar_manager is not None:
            self.grammar_manager.apply_mask(batch.reqs, logits)
        out = self.sampler(logits, info)
        keep = None
        if batch.forward_mode.is_extend() and any(r.is_chunked for r in batch.reqs):
            keep = torch.tensor([not r.is_chunked for r in batch.reqs], device=logits.device)
        info.cumulate_output_tokens(out.next_token_ids, keep)
        return out, logits

    # ---- extend --------------------------------------------------------------------------
    def process_extend_result(self, batch: "ScheduleBatch", hidden: torch.Tensor) -> None:
        rows: list[int] = []
        last_rows: list[int] = []
        lp_spans: dict[int, tuple[int, int, int]] = {}
        start = 0
        for i, r in enumerate(batch.reqs):
            p, n = batch.prefix_lens_cpu[i], batch.extend_lens_cpu[i]
            if r.wants_input_logprobs():
                first_pos = max(r.logprob_start_len - 1, p)
                lo = len(rows)
                rows.extend(range(start + first_pos - p, start + n))
                lp_spans[i] = (lo, len(rows), first_pos)
            else:
                rows.append(start + n - 1)
            last_rows.append(len(rows) - 1)
            start += n
        logits_all = self.model_runner.compute_logits(hidden[torch.tensor(rows, device=hidden.device)])
        if lp_spans:
            self._collect_input_logprobs(batch, logits_all, lp_spans)
        logits = logits_all[torch.tensor(last_rows, device=logits_all.device)]
        out, logits = self._sample(batch, logits)
        next_ids = out.next_token_ids.tolist()

        keep: list[int] = []
        for i, r in enumerate(batch.reqs):
            if r.is_chunked:
                self.tree_cache.cache_unfinished_req(r)
                if r.to_abort:
                    self._finish_without_output(
                        r, r.error_reason or {"type": "abort", "message": "Abort before prefill finished"})
                    self.chunked_req = None
                continue
            if r.sampling_params.max_new_tokens == 0 or r.to_abort:
                reason = ((r.error_reason or {"type": "abort", "message": "Abort"}) if r.to_abort
                          else {"type": "length", "length": 0})
                self._finish_without_output(r, reason)
                continue
            self._append_and_check(r, next_ids[i], out, logits, i)
            if r.finished():
                self.tree_cache.cache_finished_req(r)
            else:
                self.tree_cache.cache_unfinished_req(r)
                if not self._jump_forward(r):
                    keep.append(i)
        self.stream_output(batch.reqs)
        if not keep:
            return
        batch.output_ids = out.next_token_ids.to(torch.int64)
        batch.filter_batch(keep)
        if self.running_batch is None or self.running_batch.is_empty():
            self.running_batch = batch
        else:
            self.running_batch.merge_batch(batch)

    def _collect_input_logprobs(self, batch, logits_all: torch.Tensor, spans) -> None:
        logprobs = torch.log_softmax(logits_all[:, : self.vocab_size].float(), dim=-1)
        for i, (lo, hi, first_pos) in spans.items():
            try:
                self._input_logprobs_one(batch.reqs[i], logprobs, lo, hi, first_pos)
            except Exception as e:  # this request fails alone (finished by the extend loop)
                self.fail_req(batch.reqs[i], e)

    def _input_logprobs_one(self, r: "Req", logprobs: torch.Tensor, lo: int, hi: int, first_pos: int) -> None:
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
        if r.top_logprobs_num > 0:
            tv, ti = logprobs[row_idx].topk(r.top_logprobs_num, dim=-1)
            r.input_top_logprobs.extend([list(zip(a, b)) for a, b in zip(tv.tolist(), ti.tolist())])
        else:
            r.input_top_logprobs.extend([None] * len(qs))

    # ---- decode --------------------------------------------------------------------------
    def process_decode_result(self, batch: "ScheduleBatch", hidden: torch.Tensor) -> None:
        logits = self.model_runner.compute_logits(hidden)
        out, logits = self._sample(batch, logits)
        next_ids = out.next_token_ids.tolist()
        keep: list[int] = []
        for i, r in enumerate(batch.reqs):
            self._append_and_check(r, next_ids[i], out, logits, i)
            if r.finished():
                self.tree_cache.cache_finished_req(r)
            elif not self._jump_forward(r):
                keep.append(i)
        self.stream_output(batch.reqs)
        batch.output_ids = out.next_token_ids.to(torch.int64)
        batch.filter_batch(keep)

    def _append_and_check(self, r: "Req", token: int, out, logits: torch.Tensor, i: int) -> None:
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
        r.error_reason = {"type": "abort", "status_code": 500,
                          "message": f"Internal error while running this request: {exc!r}"}

    def fail_batch(self, batch: "ScheduleBatch", exc: BaseException) -> None:
        """A step failed where no single request can be blamed (forward, sampling, batch
        preparation): finish every unfinished request of ``batch`` with a server error, release
        its KV exactly, and keep serving everyone else."""
        logger.error("a batch of %d request(s) failed; aborting them: %r", batch.batch_size(), exc, exc_info=exc)
        reason = {"type": "abort", "status_code": 500, "message": f"Internal error while running this request: {exc!r}"}
        table = self.req_to_token_pool.req_to_token
        kv_lens = batch.kv_lens if len(batch.kv_lens) == len(batch.reqs) else None
        failed = []
        for i, r in enumerate(batch.reqs):
            if r.finished() or (r.req_pool_idx is None and r in self.waiting_queue):
                continue  # released already (finished, or jumped forward back to the queue)
            if r.req_pool_idx is not None:
                kv_len = kv_lens[i] if kv_lens is not None else r.seqlen - 1
                own = self.tree_cache.owned_prefix_len(r)
                self.allocator.free(table[r.req_pool_idx, own:kv_len].to(torch.int64))
                self.req_to_token_pool.free(r.req_pool_idx)
            if r.last_node is not None:
                self.tree_cache.dec_lock_ref(r.last_node)
            r.reset_for_retract()
            r.finished_reason = r.error_reason or reason
            failed.append(r)
            if r is self.chunked_req:
                self.chunked_req = None
        if self.running_batch is not None and any(r in failed for r in self.running_batch.reqs):
            keep = [i for i, r in enumerate(self.running_batch.reqs) if not r.finished()]
            if keep and self.running_batch is not batch:
                self.running_batch.filter_batch(keep)
            else:
                self.running_batch = None
        self.stream_output(batch.reqs)

    def _append_token(self, r: "Req", token: int, out, logits: torch.Tensor, i: int) -> None:
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
        """Append the tokens the grammar forces and requeue the request as an extend.

        Its computed KV goes to the radix tree first, so the re-prefill only computes the
        forced tokens. Returns True when the request left the running batch.
        """
        if r.grammar is None or self.grammar_manager is None:
            return False
        budget = r.sampling_params.max_new_tokens - len(r.output_ids) - 1
        forced = self.grammar_manager.forced_tokens(r)[: max(budget, 0)]
        if len(forced) < MIN_JUMP_TOKENS:
            return False
        r.fill_ids = r.origin_input_ids + r.output_ids[:-1]  # every token that has KV
        self.tree_cache.cache_unfinished_req(r)
        own = r.prefix_indices[self.tree_cache.owned_prefix_len(r):]
        self.allocator.free(own)
        self.req_to_token_pool.free(r.req_pool_idx)
        self.tree_cache.dec_lock_ref(r.last_node)
        r.reset_for_retract()
        for t in forced:
            r.output_ids.append(t)
            self.grammar_manager.accept(r, t)
        self.stats["generation_tokens"] += len(forced)
        if r.return_logprob:  # forced tokens have probability 1 under the constraint
            r.output_token_logprobs.extend((0.0, t) for t in forced)
            if r.top_logprobs_num > 0:
                r.output_top_logprobs.extend([[(0.0, t)]] for t in forced)
        self.num_jump_forward_tokens += len(forced)
        if r.to_abort or r.grammar.is_terminated():
            # Done without another forward; its KV was already released above.
            r.finished_reason = ((r.error_reason or {"type": "abort", "message": r.to_abort_message}) if r.to_abort
                                 else {"type": "stop", "matched": None})
            return True
        self.waiting_queue.insert(0, r)
        return True

    def _finish_without_output(self, r: "Req", reason: dict) -> None:
        """Release a request whose row holds KV for exactly ``fill_ids`` (no sampled token)."""
        r.finished_reason = reason
        self.tree_cache.cache_finished_req(r, token_ids=r.fill_ids)

    # ---- finish --------------------------------------------------------------------------
    def check_finished(self, r: "Req") -> None:
        sp = r.sampling_params
        last = r.output_ids[-1]
        if r.to_abort:
            r.finished_reason = r.error_reason or {"type": "abort", "message": r.to_abort_message or "Abort"}
        elif last in (sp.stop_token_ids or ()) or (not sp.ignore_eos and last in r.eos_token_ids):
            r.finished_reason = {"type": "stop", "matched": last}
        elif r.grammar is not None and r.grammar.is_terminated():
            r.finished_reason = {"type": "stop", "matched": None}
        elif len(r.output_ids) >= sp.max_new_tokens:
            r.finished_reason = {"type": "length", "length": sp.max_new_tokens}
        elif sp.stop or sp.stop_regex:
            r.finished_reason = match_stop_text(sp, r.output_ids, self._decode_for_stop)
        if r.finished_reason is None and r.seqlen >= self.context_len:
            r.finished_reason = {"type": "length", "length": len(r.output_ids)}

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

    def _single_output(self, rid: str, ids: list[int], reason: dict | None, prompt: int, completion: int,
                       cached: int) -> BatchTokenIDOut:
        return BatchTokenIDOut([rid], [ids], [reason], [prompt], [completion], [cached], [True], [False],
                               [None], [None], [None], [None])

