"""Helpers for the TP tests: a direct N-rank model forward over gloo (no scheduler).

Kept out of the test module so ``torch.multiprocessing.spawn`` children import only this.
"""

from __future__ import annotations

import datetime
import socket

import torch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@torch.no_grad()
def extend_then_decode(model, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Logits of every prompt position (one extend), then of one greedy decode step per prompt."""
    from model_utils import TinyRunner

    runner = TinyRunner(model)
    rows = [runner.new_request() for _ in prompts]
    ext = runner.extend(rows, prompts)
    nxt = [int(x[-1].argmax()) for x in ext]
    return [x.float().clone() for x in ext] + [runner.decode(rows, nxt).float().clone()]


def tp_forward_worker(rank: int, world: int, addr: str, model_path: str, prompts: list[list[int]],
                      out_path: str) -> None:
    """One TP rank: join gloo, load its shard, run ``extend_then_decode``; rank 0 saves the logits."""
    import torch.distributed as dist

    from sglite_runtime.distributed.parallel_state import destroy_tp_group, init_tp_group
    from sglite_runtime.models.loader import load_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://{addr}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        init_tp_group()
        model, _ = load_model(model_path, device="cpu")
        model.eval()
        out = extend_then_decode(model, prompts)
        if rank == 0:
            torch.save({"logits": out, "num_kv_heads": model.num_kv_heads}, out_path)
    finally:
        destroy_tp_group()
        dist.destroy_process_group()
