"""ServerArgs: every knob of the runtime, with SGLang's flag names."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass

SHIPPED_MODEL_PATH = os.path.join(os.path.dirname(__file__), "assets", "sglite-tiny")


@dataclass
class ServerArgs:
    # Model
    model_path: str = SHIPPED_MODEL_PATH
    revision: str | None = None  # Hub branch, tag or commit of a Hub id --model-path
    tokenizer_path: str | None = None
    served_model_name: str | None = None
    chat_template: str | None = None
    context_length: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    random_seed: int = 0
    # "model": generation_config.json's temperature/top_p/top_k/min_p/repetition_penalty are the
    # defaults of requests that omit them; "openai": the OpenAI defaults (1.0, 1.0, -1, ...).
    sampling_defaults: str = "model"
    # Network
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    # Memory and scheduling
    mem_fraction_static: float | None = None
    max_total_tokens: int | None = None
    max_running_requests: int | None = None
    max_prefill_tokens: int = 16384
    chunked_prefill_size: int | None = None
    schedule_policy: str = "lpm"
    # Share of a request's remaining max_new_tokens charged at admission; decays while decode
    # runs, rises on retraction. Lower admits more and relies on retraction.
    init_new_token_ratio: float = 0.7
    disable_radix_cache: bool = False
    page_size: int = 1
    stream_interval: int = 1
    # Overlap scheduling (SGLang's zero-overhead scheduler): while the model runs decode step N on a
    # worker thread, the scheduler processes step N-1's tokens. Off for TP > 1 and while a
    # running request has a grammar (its mask needs the previous token on the host).
    disable_overlap_schedule: bool = False
    # Running decode requests join each prefill's forward as one-token extends (SGLang's flag).
    enable_mixed_chunk: bool = False
    # Kernels
    attention_backend: str = "auto"
    disable_cuda_graph: bool = False
    cuda_graph_max_bs: int = 64
    # Constrained generation
    # "outlines": outlines-core for regex/JSON/choices, xgrammar for ebnf and json_object;
    # "xgrammar": xgrammar for every constraint.
    grammar_backend: str = "outlines"
    # "qwen3": split <think>...</think> into reasoning_content on /v1/chat/completions.
    reasoning_parser: str | None = None
    disable_jump_forward: bool = False
    # "token": skip only states with exactly one allowed token (output identical to masked
    # decoding). "string": skip the whole forced string, re-tokenized (far more skipped, valid
    # output, but its token split may differ from what decoding would have chosen).
    jump_forward_mode: str = "token"
    # Regex of the whitespace allowed between JSON tokens of json_schema outputs. None: at most
    # one space (bounded, so a weak model cannot loop on whitespace); "[\n\t ]*" restores
    # outlines' unbounded default.
    constrained_json_whitespace_pattern: str | None = None
    # Seconds one grammar compile may run (in a killable worker process) before it fails.
    grammar_compile_timeout: float = 30.0
    # Parallelism
    tp_size: int = 1
    dp_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None
    # Server behaviour
    log_level: str = "info"
    log_requests: bool = False
    enable_metrics: bool = False  # SGLang's default: /metrics answers 404 unless enabled
    graceful_timeout: float = 30.0
    watchdog_timeout: float = 300.0  # a forward step running longer kills the scheduler (exit 1)
    skip_server_warmup: bool = False
    num_threads: int | None = None  # torch intra-op threads in the scheduler
    # Request limits (HTTP 400/413): sequences one request may fan out to (prompts x n), and
    # the request body size, checked while reading, before parsing.
    max_fanout: int = 1024
    max_request_body_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.model_path is None:
            self.model_path = SHIPPED_MODEL_PATH
        if self.tokenizer_path is None:
            self.tokenizer_path = self.model_path
        if self.served_model_name is None:
            self.served_model_name = os.path.basename(os.path.normpath(self.model_path))
        if self.schedule_policy not in ("lpm", "fcfs"):
            raise ValueError(f"schedule_policy must be 'lpm' or 'fcfs', got {self.schedule_policy!r}")
        if self.grammar_backend not in ("outlines", "xgrammar"):
            raise ValueError(f"grammar_backend must be 'outlines' or 'xgrammar', got {self.grammar_backend!r}")
        if self.reasoning_parser not in (None, "qwen3", "deepseek-r1"):
            raise ValueError(f"reasoning_parser must be 'qwen3' or 'deepseek-r1', got {self.reasoning_parser!r}")
        if self.jump_forward_mode not in ("token", "string"):
            raise ValueError(f"jump_forward_mode must be 'token' or 'string', got {self.jump_forward_mode!r}")
        if self.sampling_defaults not in ("model", "openai"):
            raise ValueError(f"sampling_defaults must be 'model' or 'openai', got {self.sampling_defaults!r}")
        if not self.grammar_compile_timeout > 0:
            raise ValueError(f"grammar_compile_timeout must be > 0 seconds, got {self.grammar_compile_timeout}")
        if self.constrained_json_whitespace_pattern is not None:
            import re

            try:
                re.compile(self.constrained_json_whitespace_pattern)
            except re.error as exc:
                raise ValueError(f"constrained_json_whitespace_pattern is not a valid regex: {exc}") from None
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
        if self.stream_interval < 1:
            raise ValueError(f"stream_interval must be >= 1, got {self.stream_interval}")
        if not self.watchdog_timeout > 0:
            raise ValueError(f"watchdog_timeout must be > 0 seconds, got {self.watchdog_timeout}")

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(ServerArgs):
            flag = "--" + f.name.replace("_", "-")
            default = f.default
            if isinstance(default, bool):
                parser.add_argument(flag, action="store_true", default=default)
                continue
            t = str(f.type)
            typ = int if t.startswith("int") else float if t.startswith("float") else str
            kwargs: dict = {"type": typ, "default": default}
            if f.name == "schedule_policy":
                kwargs["choices"] = ["lpm", "fcfs"]
            if f.name == "jump_forward_mode":
                kwargs["choices"] = ["token", "string"]
            if f.name == "grammar_backend":
                kwargs["choices"] = ["outlines", "xgrammar"]
            if f.name == "reasoning_parser":
                kwargs["choices"] = ["qwen3", "deepseek-r1"]
            if f.name == "sampling_defaults":
                kwargs["choices"] = ["model", "openai"]
            if f.name == "attention_backend":
                kwargs["choices"] = ["auto", "torch_native", "triton", "flashinfer"]
            aliases = {"model_path": ["--model"], "tp_size": ["--tp"], "dp_size": ["--dp"]}.get(f.name, [])
            parser.add_argument(flag, *aliases, dest=f.name, **kwargs)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "ServerArgs":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def prepare_server_args(argv: list[str] | None = None) -> ServerArgs:
    parser = argparse.ArgumentParser(prog="python -m sglite.launch_server")
    ServerArgs.add_cli_args(parser)
    try:
        return ServerArgs.from_cli_args(parser.parse_args(argv))
    except ValueError as e:  # a value argparse accepted but ServerArgs refuses: same usage error
        parser.error(str(e))

