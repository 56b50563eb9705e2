"""The scheduler: continuous batching with prefill priority over a radix-cached paged KV pool.

It decides; other parts act. One iteration (``step``): admit waiting requests into an extend
batch if any fit (prefill has priority), else run one decode step of every running request;
``ModelWorker.forward_and_sample`` runs the batch (forward, grammar mask, sample, logprobs) and
``SchedulerOutputProcessor`` turns its ``StepResult`` into request updates and messages; the
scheduler then applies the ``BatchOutcome`` to its queues. Every KV hand-back goes through
``mem_cache.kv_release.release_req_kv``. The process loop (``managers/scheduler_loop.py``, one
for any TP size) only moves messages in and out of ``step``, so tests drive the same code.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import deque
from typing import Any, cast

import torch

from sglite_runtime.managers.io_struct import (
    AbortReq,
    BatchTokenIDOut,
    FinishAbort,
    FlushCacheReq,
    FlushCacheReqOutput,
    GetInternalStateReq,
    GetInternalStateReqOutput,
    TokenizedGenerateReqInput,
)
from sglite_runtime.managers.mixed_chunk import mix_running_into_prefill
from sglite_runtime.managers.schedule_batch import Req, ScheduleBatch
from sglite_runtime.managers.schedule_policy import AddReqResult, PrefillAdder, SchedulePolicy
from sglite_runtime.managers.scheduler_output import BatchOutcome, SchedulerOutputProcessor, internal_error
from sglite_runtime.mem_cache.kv_release import release_req_kv
from sglite_runtime.mem_cache.radix_cache import RadixCache
from sglite_runtime.model_executor.model_runner import ModelRunner
from sglite_runtime.model_executor.model_worker import ModelWorker
from sglite_runtime.sampling.sampling_params import SamplingParams, check_context_length
from sglite_runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

MIN_NEW_TOKEN_RATIO = 0.1
NEW_TOKEN_RATIO_DECAY = (0.7 - MIN_NEW_TOKEN_RATIO) / 600
RETRACT_DECODE_STEPS = 20
# Requests whose next this-many uncached tokens match a request admitted in the same round
# wait one round for the radix cache instead of recomputing the shared prefix.
IN_BATCH_PREFIX_LEN = 32


class Scheduler:
    """Decides what runs each step; owns the queues, the running batch and the KV pools."""

    def __init__(self, server_args: ServerArgs, tp_rank: int = 0):
        self.server_args = server_args
        self.tp_rank = tp_rank
        self.model_runner = ModelRunner(server_args, tp_rank)
        mr = self.model_runner
        self.device = mr.device
        self.vocab_size = mr.vocab_size
        self.context_len = mr.context_len
        self.max_total_num_tokens = mr.max_total_num_tokens
        self.max_running_requests = mr.max_running_requests
        self.req_to_token_pool = mr.req_to_token_pool
        self.allocator = mr.token_to_kv_pool_allocator
        self.tree_cache = RadixCache(
            self.req_to_token_pool, self.allocator, page_size=mr.page_size,
            disable=server_args.disable_radix_cache)
        self.policy = SchedulePolicy(server_args.schedule_policy, self.tree_cache, not server_args.disable_radix_cache)
        self.chunked_prefill_size = server_args.chunked_prefill_size
        if self.chunked_prefill_size is not None and self.chunked_prefill_size <= 0:
            self.chunked_prefill_size = None

        from sglite_runtime.utils.hf_utils import get_eos_token_ids, get_tokenizer

        assert server_args.tokenizer_path is not None  # ServerArgs.__post_init__ defaults it
        self.tokenizer = get_tokenizer(server_args.tokenizer_path, server_args.revision, server_args.trust_remote_code)
        self.eos_token_ids = get_eos_token_ids(server_args.model_path, self.tokenizer, server_args.revision)
        self.sampler = self._make_sampler()
        self.grammar_manager = self._make_grammar_manager()

        self.waiting_queue: list[Req] = []
        self.running_batch: ScheduleBatch | None = None
        self.chunked_req: Req | None = None
        self.init_new_token_ratio = server_args.init_new_token_ratio
        self.new_token_ratio = self.init_new_token_ratio
        self.pending_outputs: deque[BatchTokenIDOut] = deque()
        self.forward_ct = 0
        self.num_retracted = 0
        self.stats = {"prompt_tokens": 0, "cached_tokens": 0, "generation_tokens": 0, "requests": 0}
        self.worker = ModelWorker(mr, self.sampler, self.grammar_manager, self.eos_token_ids)
        self.output_processor = SchedulerOutputProcessor(
            server_args, self.tokenizer, self.context_len, self.tree_cache, self.grammar_manager,
            self.stats, self.pending_outputs)
        self.overlap = None
        if not server_args.disable_overlap_schedule and server_args.tp_size == 1:
            from sglite_runtime.managers.overlap_schedule import OverlapStepper

            self.overlap = OverlapStepper(self)
        self.step_started_at: float | None = None
        self._seed_rng = random.Random(server_args.random_seed)

    @property
    def num_jump_forward_tokens(self) -> int:
        return self.output_processor.num_jump_forward_tokens

    def _make_sampler(self):
        from sglite_runtime.layers.sampler import Sampler

        return Sampler()

    def _make_grammar_manager(self):
        from sglite_runtime.managers.grammar_manager import GrammarManager

        return GrammarManager(self)

    # ---- inputs ----------------------------------------------------------------------------
    def process_input_requests(self, msgs: list[Any]) -> list[Any]:
        """Handle incoming messages; returns control replies for the tokenizer manager."""
        replies: list[FlushCacheReqOutput | GetInternalStateReqOutput] = []
        for msg in msgs:
            if isinstance(msg, TokenizedGenerateReqInput):
                self.handle_generate_request(msg)
            elif isinstance(msg, AbortReq):
                self.handle_abort(msg)
            elif isinstance(msg, FlushCacheReq):
                ok = self.flush_cache(empty_cache=msg.empty_cache)
                replies.append(FlushCacheReqOutput(success=ok, message="" if ok else "requests are running"))
            elif isinstance(msg, GetInternalStateReq):
                replies.append(GetInternalStateReqOutput(state=self.get_internal_state()))
            else:
                logger.warning("unknown message %r", type(msg).__name__)
        return replies

    def handle_generate_request(self, recv: TokenizedGenerateReqInput) -> None:
        try:
            self._admit(recv)
        except ValueError as e:
            self._reject(recv, str(e))
        except Exception as e:  # a bug triggered by this request: it fails alone
            logger.exception("request %s failed on arrival", recv.rid)
            self._reject_rid(recv.rid, len(recv.input_ids), f"Internal error while admitting the request: {e!r}", 500)

    def _admit(self, recv: TokenizedGenerateReqInput) -> None:
        sp = SamplingParams.from_dict(dict(recv.sampling_params))
        sp.normalize(self.tokenizer)
        sp.verify(self.vocab_size)
        self._check_length(recv, sp)
        seed = sp.seed if sp.seed is not None else self._seed_rng.getrandbits(62)
        req = Req(recv.rid, recv.input_text, list(recv.input_ids), sp, seed,
                  return_logprob=recv.return_logprob, logprob_start_len=recv.logprob_start_len,
                  top_logprobs_num=recv.top_logprobs_num, stream=recv.stream,
                  eos_token_ids=self.eos_token_ids)
        self.stats["requests"] += 1
        if self.grammar_manager is not None and self.grammar_manager.needs_grammar(req):
            if self.grammar_manager.add(req):
                self.waiting_queue.append(req)
            return
        self.waiting_queue.append(req)

    def _check_length(self, recv: TokenizedGenerateReqInput, sp: SamplingParams) -> None:
        # The TokenizerManager checked this already; the scheduler must not trust its callers.
        check_context_length(sp, len(recv.input_ids), self.context_len, self.max_total_num_tokens)
        if any(t < 0 or t >= self.vocab_size for t in recv.input_ids):
            raise ValueError(f"Token id out of vocabulary (vocabulary size {self.vocab_size}).")

    def _reject(self, recv: TokenizedGenerateReqInput, message: str) -> None:
        self._reject_rid(recv.rid, len(recv.input_ids), message)

    def reject_req(self, req: Req, message: str) -> None:
        """Finish a request that never ran (it holds no KV) with a client error."""
        self._reject_rid(req.rid, len(req.origin_input_ids), message)

    def _reject_rid(self, rid: str, prompt_tokens: int, message: str, status_code: int = 400) -> None:
        self.pending_outputs.append(self.output_processor.single_output(
            rid, [], FinishAbort(message, status_code=status_code), prompt_tokens, 0, 0))

    def handle_abort(self, recv: AbortReq) -> None:
        def hit(r: Req) -> bool:
            # Exact rids only: the TokenizerManager names each sample of an n > 1 request.
            return recv.abort_all or r.rid == recv.rid

        for r in [r for r in self.waiting_queue if hit(r)]:
            self.waiting_queue.remove(r)
            self.pending_outputs.append(self.output_processor.single_output(
                r.rid, [], FinishAbort("Abort in waiting queue"), len(r.origin_input_ids),
                len(r.output_ids), r.cached_tokens))
        if self.grammar_manager is not None:
            for r in self.grammar_manager.abort(hit):
                self.pending_outputs.append(self.output_processor.single_output(
                    r.rid, [], FinishAbort("Abort in grammar queue"), len(r.origin_input_ids), 0, 0))
        running = self.running_batch.reqs if self.running_batch else []
        for r in list(running) + ([self.chunked_req] if self.chunked_req else []):
            if hit(r):
                r.to_abort = True  # freed through the normal finish path at the next step

    # ---- batch selection ---------------------------------------------------------------------
    def get_next_batch_to_run(self) -> ScheduleBatch | None:
        if self.grammar_manager is not None:
            self.waiting_queue.extend(self.grammar_manager.pop_ready())
        batch = self.get_new_batch_prefill()
        if batch is not None:
            return batch
        return self.update_running_batch()

    def _num_running(self) -> int:
        return self.running_batch.batch_size() if self.running_batch else 0

    def get_new_batch_prefill(self) -> ScheduleBatch | None:
        if not self.waiting_queue and self.chunked_req is None:
            return None
        running = self.running_batch.reqs if self.running_batch else []
        if self._num_running() >= self.max_running_requests and self.chunked_req is None:
            return None
        self.policy.calc_priority(self.waiting_queue)
        adder = PrefillAdder(
            self.tree_cache, self.allocator.available_size(), running, self.new_token_ratio,
            self.server_args.max_prefill_tokens, self.chunked_prefill_size, self.allocator.page_size)
        if self.chunked_req is not None:
            self.chunked_req.fill_ids = self.chunked_req.origin_input_ids + self.chunked_req.output_ids
            self.chunked_req = adder.add_chunked_req(self.chunked_req)
        if self.chunked_req is None:
            in_batch: set[tuple[int, ...]] = set()
            for req in list(self.waiting_queue):
                if self._num_running() + len(adder.can_run_list) >= self.max_running_requests:
                    break
                if self._shares_prefix_in_batch(req, in_batch):
                    continue  # runs next round and hits the prefix its twin caches now
                res = adder.add_one_req(req)
                if adder.can_run_list and adder.can_run_list[-1] is req:
                    self.waiting_queue.remove(req)
                if res != AddReqResult.CONTINUE:
                    break
            if adder.new_chunked_req is not None:
                self.chunked_req = adder.new_chunked_req
        if not adder.can_run_list:
            return None
        for r in adder.can_run_list:
            if not r._cached_counted:
                r.cached_tokens = len(r.prefix_indices)
                r._cached_counted = True
                self.stats["prompt_tokens"] += len(r.origin_input_ids)
                self.stats["cached_tokens"] += r.cached_tokens
        batch = ScheduleBatch(adder.can_run_list, self.req_to_token_pool, self.allocator, self.tree_cache, self.device)
        if self.server_args.enable_mixed_chunk and mix_running_into_prefill(batch, self.running_batch):
            self.running_batch = None  # its requests are in this batch; the survivors come back
        try:
            batch.prepare_for_extend()
        except Exception as e:
            self.fail_batch(batch, e)
            return None
        return batch

    def _shares_prefix_in_batch(self, req: Req, seen: set[tuple[int, ...]]) -> bool:
        """Whether ``req``'s first uncached tokens equal those of a request admitted this round.

        Admitting both would compute the shared part twice; deferring one step lets the radix
        cache serve it instead.
        """
        if self.server_args.disable_radix_cache or req.extend_input_len <= IN_BATCH_PREFIX_LEN:
            return False
        key = tuple(req.fill_ids[: len(req.prefix_indices) + IN_BATCH_PREFIX_LEN])
        if key in seen:
            return True
        seen.add(key)
        return False

    def update_running_batch(self) -> ScheduleBatch | None:
        batch = self.running_batch
        if batch is None or batch.is_empty():
            return None
        if not batch.check_decode_mem():
            retracted = batch.retract_decode()
            self.num_retracted += len(retracted)
            # max_new_tokens is always set once a request is admitted (request validation).
            total_max_new = sum(cast(int, r.sampling_params.max_new_tokens) for r in batch.reqs) or 1
            decoded = sum(len(r.output_ids) for r in batch.reqs)
            self.new_token_ratio = min(1.0, (decoded + RETRACT_DECODE_STEPS * batch.batch_size()) / total_max_new)
            logger.info("KV cache full: retracted %d requests; new_token_ratio=%.3f", len(retracted), self.new_token_ratio)
            self.waiting_queue = retracted + self.waiting_queue
        else:
            self.new_token_ratio = max(self.new_token_ratio - NEW_TOKEN_RATIO_DECAY, min(MIN_NEW_TOKEN_RATIO, self.init_new_token_ratio))
        try:
            batch.prepare_for_decode()
        except Exception as e:
            self.fail_batch(batch, e)
            return None
        return batch

    # ---- one iteration -----------------------------------------------------------------------
    def step(self) -> bool:
        """Run one batch if there is work. Returns False when idle."""
        if self.overlap is not None:
            return self.overlap.step()
        batch = self.get_next_batch_to_run()
        if batch is None:
            if not self.waiting_queue and self.chunked_req is None:
                self.new_token_ratio = self.init_new_token_ratio
            return False
        self.run_batch_guarded(batch)
        return True

    def run_batch_guarded(self, batch: ScheduleBatch) -> None:
        """Run and process ``batch``; an error fails its requests only, the scheduler keeps serving."""
        self.step_started_at = time.monotonic()  # read by the --watchdog-timeout thread
        try:
            self.run_batch(batch)
        except Exception as e:
            self.fail_batch(batch, e)
        finally:
            self.step_started_at = None
        self.forward_ct += 1

    def has_work(self) -> bool:
        return bool(self.waiting_queue or self.chunked_req or (self.running_batch and not self.running_batch.is_empty())
                    or (self.overlap is not None and self.overlap.busy())
                    or (self.grammar_manager is not None and self.grammar_manager.has_pending()))

    def run_batch(self, batch: ScheduleBatch) -> None:
        result = self.worker.forward_and_sample(batch)
        if batch.forward_mode.is_extend():
            self.apply_outcome(self.output_processor.process_extend_result(batch, result))
        else:
            self.apply_outcome(self.output_processor.process_decode_result(batch, result))

    def apply_outcome(self, outcome: BatchOutcome) -> None:
        """Move a processed batch's requests where they go next: running, or the queue's front."""
        if outcome.chunked_done:
            self.chunked_req = None
        for r in outcome.requeue:  # re-prefilled first (jump-forward), last requeued first
            self.waiting_queue.insert(0, r)
        if outcome.running is not None:
            if self.running_batch is None or self.running_batch.is_empty():
                self.running_batch = outcome.running
            else:
                self.running_batch.merge_batch(outcome.running)

    def fail_batch(self, batch: ScheduleBatch, exc: BaseException) -> None:
        """A step failed where no single request can be blamed (forward, sampling, batch
        preparation): finish every unfinished request of ``batch`` with a server error, release
        its KV exactly, and keep serving everyone else."""
        logger.error("a batch of %d request(s) failed; aborting them: %r", batch.batch_size(), exc, exc_info=exc)
        reason = internal_error(exc)
        kv_lens = batch.kv_lens if len(batch.kv_lens) == len(batch.reqs) else None
        failed = []
        for i, r in enumerate(batch.reqs):
            if r.finished() or (r.req_pool_idx is None and r in self.waiting_queue):
                continue  # released already (finished, or jumped forward back to the queue)
            release_req_kv(self.tree_cache, r, kv_lens[i] if kv_lens is not None else r.seqlen - 1, cache=False)
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
        self.output_processor.stream_output(batch.reqs)

    # ---- control -----------------------------------------------------------------------------
    def flush_cache(self, empty_cache: bool = False) -> bool:
        """Drop the radix cache and compiled grammars (False while requests run); with
        ``empty_cache``, also hand the device allocator's unused cached blocks back."""
        if self.overlap is not None:
            self.overlap.settle()
        if self.has_work():
            return False
        self.tree_cache.reset()
        self.allocator.clear()
        self.req_to_token_pool.clear()
        if self.grammar_manager is not None:  # compiled grammars and cached compile failures
            self.grammar_manager.cache.reset()
        if empty_cache and torch.device(self.device).type == "cuda":
            torch.cuda.empty_cache()
        logger.info("Cache flushed%s", " (device cache emptied)" if empty_cache else "")
        return True

    def pool_stats(self) -> dict[str, int]:
        return {
            "total": self.max_total_num_tokens,
            "available": self.allocator.available_size(),
            "evictable": self.tree_cache.evictable_size(),
            "protected": self.tree_cache.protected_size(),
        }

    def check_memory(self) -> None:
        """When idle, every slot is either free or held by an unlocked tree node."""
        s = self.pool_stats()
        if s["available"] + s["evictable"] != s["total"] or s["protected"]:
            raise RuntimeError(f"KV pool leak detected: {s}")
        if self.req_to_token_pool.available_size() != self.req_to_token_pool.usable_size():
            raise RuntimeError("request slot leak detected")

    def get_internal_state(self) -> dict[str, Any]:
        hit = self.stats["cached_tokens"] / max(self.stats["prompt_tokens"], 1)
        return {
            "kv_pool": self.pool_stats(),
            "num_running_reqs": self._num_running(),
            "num_waiting_reqs": len(self.waiting_queue),
            "num_grammar_queue_reqs": self.grammar_manager.num_pending() if self.grammar_manager else 0,
            "max_total_num_tokens": self.max_total_num_tokens,
            "max_running_requests": self.max_running_requests,
            "context_len": self.context_len,
            "new_token_ratio": self.new_token_ratio,
            "num_retracted_reqs": self.num_retracted,
            "num_jump_forward_tokens": self.num_jump_forward_tokens,
            "cache_hit_rate": hit,
            "pid": os.getpid(),  # the scheduler process (operators, and the chaos test, need it)
            **{f"{k}_total": v for k, v in self.stats.items()},
        }

    def drain_outputs(self) -> list[BatchTokenIDOut]:
        out = list(self.pending_outputs)
        self.pending_outputs.clear()
        return out
