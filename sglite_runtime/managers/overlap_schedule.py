"""Overlap scheduling (SGLang's zero-overhead scheduler) for decode steps.

Without it a step is strictly sequential: prepare, forward, sample, then the host work (append
tokens, stop strings, detokenize-side bookkeeping, messages), and only then the next prepare.
With it, decode step N+1 is launched on a worker thread (torch releases the GIL in its ops)
*before* the host processes step N's tokens, and its input ids are step N's sampled tensor
itself, so nothing waits on the host in between (SGLang's "future token ids": here the rows of
N+1 are exactly the rows of N, because the batch is filtered only when the worker is idle).

Consequences, as in SGLang:

* A request that finishes in step N (a stop token, a stop string, its length, an abort) is in
  step N+1 already: that extra token is discarded, and the release at N hands back the KV slot
  N+1 writes too (``kv_extra=1``), so the pool is exact when idle.
* Anything that needs step N's token on the host before N+1 is prepared drains the pipeline
  and runs sequentially: waiting or chunked prefills (prefill has priority), a running request
  with a grammar (its mask and jump-forward), a decode step that would need a retraction.
* TP > 1 runs sequentially: the worker's collectives and the loop's broadcasts would share
  the CPU group from two threads.

Outputs are identical with overlap on and off (``tests/runtime/test_overlap_schedule.py``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sglite_runtime.managers.schedule_batch import ScheduleBatch
    from sglite_runtime.managers.scheduler import Scheduler
    from sglite_runtime.model_executor.model_worker import StepResult

logger = logging.getLogger(__name__)


def _bind_device(device: str) -> None:
    # The current CUDA device is per thread: the worker must run on the scheduler's GPU.
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(torch.device(device))


class OverlapStepper:
    """Runs ``Scheduler.step`` with one decode step in flight on a worker thread."""

    def __init__(self, scheduler: "Scheduler"):
        self.s = scheduler
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sglite-model-worker",
                                       initializer=_bind_device, initargs=(str(scheduler.device),))
        self.inflight: tuple[ScheduleBatch, Future[StepResult]] | None = None

    def busy(self) -> bool:
        return self.inflight is not None

    def step(self) -> bool:
        """One scheduler iteration; returns False when idle (nothing ran or was collected)."""
        s = self.s
        if self.inflight is None:
            batch = s.get_next_batch_to_run()
            if batch is None:
                if not s.waiting_queue and s.chunked_req is None:
                    s.new_token_ratio = s.init_new_token_ratio
                return False
            if batch.forward_mode.is_decode() and self._no_host_dependency(batch):
                self._launch(batch)
            else:
                s.run_batch_guarded(batch)
            return True
        self._collect_and_continue()
        return True

    def settle(self) -> None:
        """Collect the step in flight now (it may hold only finished requests' extra tokens),
        so that a control request right after the last output (``/flush_cache``) sees the
        scheduler idle, as it would without overlap."""
        if self.inflight is not None:
            self._collect_and_continue()

    # ---- internals ---------------------------------------------------------------------------
    def _launch(self, batch: "ScheduleBatch") -> None:
        self.s.step_started_at = time.monotonic()  # read by the --watchdog-timeout thread
        self.inflight = (batch, self.pool.submit(self.s.worker.forward_and_sample, batch))

    def _no_host_dependency(self, batch: "ScheduleBatch") -> bool:
        """Whether the next step may be prepared before this one's tokens reach the host."""
        s = self.s
        if s.grammar_manager is not None:
            s.waiting_queue.extend(s.grammar_manager.pop_ready())
        return (not s.waiting_queue and s.chunked_req is None
                and all(r.grammar is None for r in batch.reqs))

    def _collect_and_continue(self) -> None:
        s = self.s
        batch, fut = self.inflight  # type: ignore[misc]
        self.inflight = None
        try:
            res = fut.result()
        except Exception as e:  # the forward or sampling failed: this batch fails, serving goes on
            s.step_started_at = None
            s.fail_batch(batch, e)
            s.forward_ct += 1
            return
        s.step_started_at = None
        s.forward_ct += 1
        # Requests that finished while this step ran (processed at the previous iteration):
        # their row here is the discarded extra token.
        keep = [i for i, r in enumerate(batch.reqs) if not r.finished()]
        if len(keep) < len(batch.reqs):
            batch.output_ids = res.next_token_ids  # filtered with the batch
            batch.filter_batch(keep)
            res = res.select(keep)
        if batch.is_empty():
            return
        reqs = list(batch.reqs)
        if self._no_host_dependency(batch) and batch.check_decode_mem():
            batch.output_ids = res.next_token_ids  # the next step's inputs, never via the host
            nxt = s.update_running_batch()  # prepare_for_decode
            if nxt is None:  # preparing failed: fail_batch finished and released these requests
                return
            self._launch(nxt)
            # Host work for step N while step N+1 runs; the batch is filtered at the next collect.
            try:
                s.output_processor.process_decode_rows(reqs, res, kv_extra=1)
            except Exception as e:  # they finish (released exactly) at the next collect
                for r in reqs:
                    if not r.finished():
                        s.output_processor.fail_req(r, e)
            return
        try:
            s.apply_outcome(s.output_processor.process_decode_result(batch, res))
        except Exception as e:
            s.fail_batch(batch, e)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)
