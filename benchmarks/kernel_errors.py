"""Max abs error of each Triton kernel against its torch reference, written to results/*.json.

    python benchmarks/kernel_errors.py            # CPU: runs under TRITON_INTERPRET=1 (slow, small shapes)
    python benchmarks/kernel_errors.py --device cuda

Random mixes: prefix 0..~200, extend 1..64, decode lengths 1..~200, GQA 1/2/4/8, head dims 64
and 128, page sizes 1 and 16 (shuffled pages), fp32 (and bf16 on CUDA).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
logger = logging.getLogger("kernel_errors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton's first import
    sys.path.insert(0, ROOT)
    from kernels.decode_attention import decode_attention_fwd
    from kernels.extend_attention import extend_attention_fwd
    from kernels.reference import decode_attention_ref, extend_attention_ref
    from kernels.testing import make_paged_kv

    dev = args.device
    dtypes = [torch.float32] + ([torch.bfloat16] if dev == "cuda" else [])
    heads = [(4, 4), (4, 2), (8, 2), (8, 1)]  # GQA 1, 2, 4, 8
    g = torch.Generator().manual_seed(args.seed)
    rows = []
    for dtype in dtypes:
        for h, kvh in heads:
            for d in (64, 128):
                for page in (1, 16):
                    prefix = [0] + torch.randint(1, 200, (2,), generator=g).tolist()
                    ext = torch.randint(1, 65, (3,), generator=g).tolist()
                    seq = [p + e for p, e in zip(prefix, ext)]
                    kv = make_paged_kv(seq, kvh, d, page, dtype=dtype, device=dev, generator=g)
                    n = sum(ext)
                    q, k, v = (torch.randn(n, x, d, generator=g).to(dtype).to(dev) for x in (h, kvh, kvh))
                    el = torch.tensor(ext, device=dev)
                    st = torch.cumsum(el, 0) - el
                    common = (kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, el, st, d**-0.5)
                    out, ref = torch.empty_like(q), torch.empty_like(q)
                    t0 = time.perf_counter()
                    extend_attention_fwd(q, k, v, out, *common)
                    t_ext = time.perf_counter() - t0
                    extend_attention_ref(q, k, v, ref, *common)
                    e_ext = (out.float() - ref.float()).abs().max().item()

                    qd = torch.randn(len(seq), h, d, generator=g).to(dtype).to(dev)
                    od, rd = torch.empty_like(qd), torch.empty_like(qd)
                    dargs = (kv.k_buffer, kv.v_buffer)
                    t0 = time.perf_counter()
                    decode_attention_fwd(qd, *dargs, od, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, d**-0.5)
                    t_dec = time.perf_counter() - t0
                    decode_attention_ref(qd, *dargs, rd, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, d**-0.5)
                    e_dec = (od.float() - rd.float()).abs().max().item()
                    row = dict(dtype=str(dtype).removeprefix("torch."), heads=h, kv_heads=kvh, head_dim=d, page_size=page,
                               prefix_lens=prefix, extend_lens=ext, extend_max_abs_err=e_ext, decode_max_abs_err=e_dec,
                               extend_s=round(t_ext, 3), decode_s=round(t_dec, 3))  # fmt: skip
                    logger.info("%s H=%d KVH=%d D=%d page=%d  extend %.2e  decode %.2e",
                                row["dtype"], h, kvh, d, page, e_ext, e_dec)  # fmt: skip
                    rows.append(row)

    summary = {}
    for dtype in dtypes:
        dt = str(dtype).removeprefix("torch.")
        sel = [r for r in rows if r["dtype"] == dt]
        summary[dt] = {
            "extend_attention_max_abs_err": max(r["extend_max_abs_err"] for r in sel),
            "decode_attention_max_abs_err": max(r["decode_max_abs_err"] for r in sel),
        }
    result = {
        "what": "max abs error of Triton kernels vs torch references (kernels/reference.py)",
        "device": dev if dev == "cpu" else torch.cuda.get_device_name(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "python": platform.python_version(),
        "summary": summary,
        "cases": rows,
    }
    name = "kernel_errors_cpu_interpret.json" if dev == "cpu" else "kernel_errors_cuda.json"
    path = args.out or os.path.join(ROOT, "benchmarks", "results", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    logger.info("summary %s -> %s", json.dumps(summary), path)


if __name__ == "__main__":
    main()
