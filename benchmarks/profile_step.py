"""Engine overhead per decode step: step wall time minus model time, at batch 1 and 64.

Drives a Scheduler in-process (no ZMQ, no detokenizer): ``batch`` greedy requests are
prefilled, then ``--steps`` decode steps are timed. Model time is the time inside
``ModelRunner.forward`` plus ``compute_logits`` (the LM head); everything else in
``Scheduler.step`` (batch preparation, sampling, penalties, per-request bookkeeping, stream
outputs) is engine overhead. ``--cprofile`` adds the top non-model functions by own time.

    python benchmarks/profile_step.py [--model PATH|mid] [--batch-sizes 1 64] [--steps 100]

For a before/after comparison, run it under two source trees in alternation (same noise):
``PYTHONPATH=/path/to/old/tree python benchmarks/profile_step.py --tag before``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import SHIPPED, random_requests, write_results  # noqa: E402
from model_zoo import resolve_model  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# Engine parts timed separately (methods of the scheduler, its worker or its output processor;
# absent ones are skipped). Model time is
# ModelRunner.forward + compute_logits; the parts may nest in each other, so they need not sum.
PARTS = ("get_next_batch_to_run", "build_forward_batch", "_sample", "stream_output")


class ModelTimer:
    """Wraps the runner's forward and LM head (model time) and a few scheduler methods
    (a breakdown of the rest); accumulates wall time per name (synced on a GPU)."""

    def __init__(self, scheduler):
        runner = scheduler.model_runner
        self.device = runner.device
        self.by_name: dict[str, float] = {}
        for name in ("forward", "compute_logits"):
            setattr(runner, name, self._wrap(name, getattr(runner, name)))
        owners = (scheduler, getattr(scheduler, "worker", None), getattr(scheduler, "output_processor", None))
        for name in PARTS:
            for owner in owners:
                if owner is not None and hasattr(owner, name):
                    setattr(owner, name, self._wrap(name, getattr(owner, name)))
                    break

    @property
    def total(self) -> float:
        return self.by_name.get("forward", 0.0) + self.by_name.get("compute_logits", 0.0)

    def _wrap(self, name, fn):
        def timed(*a, **kw):
            _sync(self.device)
            t = time.perf_counter()
            out = fn(*a, **kw)
            _sync(self.device)
            self.by_name[name] = self.by_name.get(name, 0.0) + time.perf_counter() - t
            return out

        return timed


def profile_batch(model: str, batch: int, steps: int, device: str, use_cprofile: bool, prompt_len: int,
                  overlap: bool = False) -> dict:
    import dataclasses

    from sglite_runtime.managers.io_struct import TokenizedGenerateReqInput
    from sglite_runtime.managers.scheduler import Scheduler
    from sglite_runtime.server_args import ServerArgs

    kw = {}
    if "disable_overlap_schedule" in {f.name for f in dataclasses.fields(ServerArgs)}:
        # Serial steps by default: with overlap the model runs beside the bookkeeping, and
        # "step - model" no longer measures the bookkeeping.
        kw["disable_overlap_schedule"] = not overlap
    s = Scheduler(ServerArgs(model_path=model, device=device, max_total_tokens=max(8192, batch * 1024),
                             max_running_requests=max(batch, 4), **kw))
    vocab = s.model_runner.vocab_size
    reqs = random_requests(batch, (prompt_len, prompt_len), (1, 1), vocab, seed=0)
    sp = {"max_new_tokens": steps + 32, "temperature": 0, "ignore_eos": True}
    s.process_input_requests([TokenizedGenerateReqInput(rid=str(i), input_text=None, input_ids=p,
                                                        sampling_params=dict(sp)) for i, (p, _) in enumerate(reqs)])
    # Prefill everything, then a few decode steps of warm-up.
    while s.waiting_queue or s.chunked_req is not None:
        s.step()
    for _ in range(5):
        s.step()
    s.drain_outputs()
    assert s.running_batch is not None and s.running_batch.batch_size() == batch, "not all requests decoding"
    timer = ModelTimer(s)
    step_times, model_times = [], []
    prof = cProfile.Profile() if use_cprofile else None
    for _ in range(steps):
        before = timer.total
        _sync(device)
        t = time.perf_counter()
        if prof:
            prof.enable()
        s.step()
        s.drain_outputs()
        if prof:
            prof.disable()
        _sync(device)
        step_times.append(time.perf_counter() - t)
        model_times.append(timer.total - before)
    overheads = [a - b for a, b in zip(step_times, model_times)]
    res = {"batch": batch, "steps": steps,
           "step_ms_median": statistics.median(step_times) * 1e3,
           "model_ms_median": statistics.median(model_times) * 1e3,
           "overhead_ms_median": statistics.median(overheads) * 1e3,
           "overhead_ms_mean": statistics.fmean(overheads) * 1e3}
    res["overhead_share"] = res["overhead_ms_median"] / res["step_ms_median"]
    res["mean_ms_per_step"] = {k: v / steps * 1e3 for k, v in timer.by_name.items()}
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        res["cprofile_top"] = buf.getvalue().splitlines()[-30:]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=SHIPPED)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--overlap", action="store_true",
                    help="keep overlap scheduling on (then step time, not the overhead, is the figure)")
    ap.add_argument("--tag", default="", help="suffix of the results file (e.g. before / after)")
    args = ap.parse_args()
    label = os.path.basename(args.model) if os.path.isdir(args.model) else args.model
    model = resolve_model(args.model)
    import sglite_runtime

    out = {"model": label, "source": os.path.dirname(os.path.dirname(sglite_runtime.__file__)), "runs": []}
    for b in args.batch_sizes:
        r = profile_batch(model, b, args.steps, args.device, args.cprofile, args.prompt_len, args.overlap)
        out["runs"].append(r)
        print(f"batch {b:3d}: step {r['step_ms_median']:7.3f} ms  model {r['model_ms_median']:7.3f} ms  "
              f"engine overhead {r['overhead_ms_median']:6.3f} ms ({r['overhead_share']:.0%})  parts: "
              + " ".join(f"{k}={v:.3f}" for k, v in r["mean_ms_per_step"].items()), flush=True)
        for line in r.get("cprofile_top", []):
            print("   ", line)
    write_results("profile_step" + (f"_{args.tag}" if args.tag else ""), out)


if __name__ == "__main__":
    main()
