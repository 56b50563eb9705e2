"""ModelRunner: owns the model, the KV pools and the attention backend; runs one forward."""

from __future__ import annotations

import logging
import os

import torch

from sglite_runtime.mem_cache.memory_pool import (
    MHATokenToKVPool,
    ReqToTokenPool,
    TokenToKVPoolAllocator,
    kv_bytes_per_token,
)
from sglite_runtime.model_executor.forward_batch import ForwardBatch
from sglite_runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

# Without --max-total-tokens on a CPU, size the pool by this many bytes of KV (capped in tokens),
# so that starting an engine does not zero gigabytes of RAM.
CPU_DEFAULT_KV_BYTES = 1 << 30
CPU_DEFAULT_MAX_TOKENS = 65536


def _resolve_dtype(name: str, hf_config) -> torch.dtype | None:
    if name == "auto":
        return None
    return {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
            "half": torch.float16, "float16": torch.float16}[name]


class ModelRunner:
    def __init__(self, server_args: ServerArgs, tp_rank: int = 0):
        self.server_args = server_args
        self.tp_rank = tp_rank
        self.device = server_args.resolved_device()
        torch.manual_seed(server_args.random_seed)

        from sglite_runtime.models.loader import load_model

        self.model, self.hf_config = load_model(
            server_args.model_path, dtype=_resolve_dtype(server_args.dtype, None), device=self.device,
            revision=server_args.revision, trust_remote_code=server_args.trust_remote_code,
        )
        self.model.eval()
        if self.device == "cpu":
            threads = cpu_threads(server_args, self.hf_config)
            torch.set_num_threads(threads)
            warn_if_oversubscribed(server_args, threads)
        self.dtype = next(self.model.parameters()).dtype
        cfg = self.hf_config
        self.vocab_size = cfg.vocab_size
        context_len = server_args.context_length or getattr(cfg, "max_position_embeddings", 2048)
        assert context_len is not None  # the flag's, or the config's max_position_embeddings
        self.context_len: int = context_len
        self.num_layers = cfg.num_hidden_layers
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.head_dim = head_dim
        # The attention layers' own per-rank count (kv_heads / tp, or 1 replicated head when kv_heads < tp).
        self.num_kv_heads = getattr(self.model, "num_kv_heads", None) or self._local_kv_heads()
        self.page_size = server_args.page_size
        self._init_memory_pool()
        self.attn_backend = self._create_attn_backend()
        self.cuda_graph_runner = self._create_cuda_graph_runner()

    # ---- setup -------------------------------------------------------------------------
    def _local_kv_heads(self) -> int:
        from sglite_runtime.distributed.parallel_state import get_tp_size

        kv = getattr(self.hf_config, "num_key_value_heads", None) or self.hf_config.num_attention_heads
        tp = get_tp_size()
        return max(kv // tp, 1)

    def _init_memory_pool(self) -> None:
        args = self.server_args
        per_token = kv_bytes_per_token(self.num_layers, self.num_kv_heads, self.head_dim, self.dtype)
        if args.max_total_tokens:
            total = args.max_total_tokens
        elif self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info()
            frac = args.mem_fraction_static or 0.85
            total_mem = torch.cuda.get_device_properties(0).total_memory
            budget = free - (1 - frac) * total_mem
            total = int(max(budget, 0) // per_token)
        else:
            budget = CPU_DEFAULT_KV_BYTES if args.mem_fraction_static is None else int(
                args.mem_fraction_static * _physical_memory())
            total = min(budget // per_token, CPU_DEFAULT_MAX_TOKENS)
        total = _min_over_tp(total, self.device)
        total -= total % self.page_size
        if total < self.page_size * 2:
            raise ValueError(f"KV pool too small: {total} tokens; raise --max-total-tokens or --mem-fraction-static")
        self.max_total_num_tokens = total
        self.max_running_requests = args.max_running_requests or min(256, max(total // 16, 4))
        self.req_to_token_pool = ReqToTokenPool(self.max_running_requests + 1, self.context_len + 8, self.device)
        self.token_to_kv_pool_allocator = TokenToKVPoolAllocator(total, self.page_size, self.device)
        self.token_to_kv_pool = MHATokenToKVPool(
            total, self.page_size, self.dtype, self.num_kv_heads, self.head_dim, self.num_layers, self.device)
        logger.info(
            "KV pool: %d tokens (%.1f MiB, %d B/token), max_running_requests=%d, context_len=%d",
            total, total * per_token / 2**20, per_token, self.max_running_requests, self.context_len)

    def _create_attn_backend(self):
        from sglite_runtime.attention import create_attention_backend

        return create_attention_backend(self.server_args.attention_backend, self.device, self)

    def _create_cuda_graph_runner(self):
        """Decode CUDA graphs on a GPU unless --disable-cuda-graph (never on a CPU)."""
        if not self.device.startswith("cuda") or self.server_args.disable_cuda_graph:
            return None
        if not getattr(self.model, "supports_cuda_graph", True):
            logger.info("%s cannot run in CUDA graphs (MoE expert loop); decode runs eagerly",
                        type(self.model).__name__)
            return None
        if not getattr(self.attn_backend, "supports_cuda_graph", False):
            logger.warning("attention backend %s cannot run in CUDA graphs; decode runs eagerly",
                           type(self.attn_backend).__name__)
            return None
        from sglite_runtime.model_executor.cuda_graph_runner import CudaGraphRunner

        runner = CudaGraphRunner(self)
        logger.info("captured decode CUDA graphs for batch sizes %s", runner.batch_sizes)
        return runner

    # ---- forward -------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        """Run the model; returns hidden states ``[num_tokens, hidden]`` (a view of a graph's
        static output for replayed decodes: consume it before the next forward)."""
        if fb.forward_mode.is_decode() and self.cuda_graph_runner is not None and self.cuda_graph_runner.can_run(fb):
            return self.cuda_graph_runner.replay(fb)
        self.attn_backend.init_forward_metadata(fb)
        return self.model(fb.input_ids, fb.positions, fb)

    def forward_decode_raw(self, fb: ForwardBatch) -> torch.Tensor:
        """The model on a prepared DECODE batch, metadata already set (what graphs capture)."""
        return self.model(fb.input_ids, fb.positions, fb)

    @torch.no_grad()
    def compute_logits(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        # no_grad, not inference_mode: the result is an ordinary tensor, so penalties and
        # grammar masks can update it in place without the scheduler copying it every step.
        return self.model.compute_logits(hidden_rows).float()


def cpu_threads(server_args: ServerArgs, hf_config) -> int:
    """Intra-op threads on CPU: ``--num-threads``, else SGLITE_NUM_THREADS, else one thread for
    small models (their ops are too small to split, and spinning worker threads cost more than
    they give, badly so on a loaded machine), else every core but one.

    The spare core is the scheduler thread's: with overlap scheduling (the default) it works
    beside the model, and an intra-op team that needs every core stalls at each barrier whenever
    that thread takes one (on 2 cores, 2 threads with overlap ran at 0.55-0.75x of 2 threads
    without it). The default does not depend on ``--disable-overlap-schedule``, so outputs stay
    bitwise equal with overlap on and off (another thread count may reorder float reductions).
    For offline batch work on a CPU, ``--disable-overlap-schedule --num-threads <cores>`` is
    faster (1.5-1.7x on 2 cores; ``benchmarks/bench_offline.py`` sweeps it)."""
    explicit = server_args.num_threads or int(os.environ.get("SGLITE_NUM_THREADS", 0))
    if explicit:
        return explicit
    return 1 if hf_config.hidden_size <= 1024 else max(1, (os.cpu_count() or 1) - 1)


def warn_if_oversubscribed(server_args: ServerArgs, threads: int) -> None:
    """Say so when overlap scheduling's thread and the intra-op threads want more cores than exist."""
    cores = os.cpu_count() or 1
    overlap = not server_args.disable_overlap_schedule and server_args.tp_size == 1
    if overlap and threads >= cores > 1:
        logger.warning(
            "%d torch threads on %d cores with overlap scheduling: the scheduler thread competes with "
            "the model's threads at every step. Use --num-threads %d, or --disable-overlap-schedule "
            "to give the model every core.", threads, cores, cores - 1)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


def _min_over_tp(total: int, device: str) -> int:
    """The smallest pool size over the TP ranks: ranks must agree or their schedulers diverge."""
    from sglite_runtime.distributed.parallel_state import get_tp_group, get_tp_size

    if get_tp_size() == 1:
        return total
    import torch.distributed as dist

    t = torch.tensor([total], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=get_tp_group())
    return int(t.item())
