"""The scheduler's side of constrained generation: grammar queue, batch masks, jump-forward.

A constrained request waits in the grammar queue (never blocking the running batch) until
its grammar is compiled in the GrammarCache's thread pool; a failed compile finishes the
request with a 400-style abort. Each step the masks of the batch's constrained rows are
filled into one bitmask and applied to the logits in one op. No grammar error can raise into
the scheduler loop: it aborts only the request it belongs to.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Callable

import torch

from sglite_runtime.constrained.backend_router import RoutedGrammarBackend, validate_constraint
from sglite_runtime.constrained.base import is_invalid
from sglite_runtime.constrained.compile_worker import UNREACHABLE
from sglite_runtime.constrained.grammar_cache import GrammarCache, make_key

if TYPE_CHECKING:
    from sglite_runtime.managers.schedule_batch import Req
    from sglite_runtime.managers.scheduler import Scheduler

logger = logging.getLogger(__name__)

GENERIC_OBJECT_SCHEMAS = ({"type": "object"},)
# A forced run longer than this is left to the next jump (bounds one extend step).
MAX_JUMP_TOKENS = 256


def grammar_key(sp: Any) -> tuple[str, str] | None:
    """The (kind, spec) a request's sampling params constrain it with, or None."""
    if sp.regex is not None:
        return ("regex", sp.regex)
    if sp.json_schema is not None:
        spec = sp.json_schema
        try:
            if json.loads(spec) in GENERIC_OBJECT_SCHEMAS:
                return ("json_object", "")
        except (TypeError, ValueError):
            pass
        return ("json", spec)
    if sp.choices is not None:
        return ("choices", json.dumps(list(sp.choices)))
    if getattr(sp, "ebnf", None) is not None:
        return ("ebnf", sp.ebnf)
    return None


def validate_sampling_params(sp: Any) -> None:
    """Cheap up-front check for the TokenizerManager: ValueError → HTTP 400."""
    key = grammar_key(sp)
    if key is not None:
        try:
            validate_constraint(*key)
        except ValueError as e:
            raise ValueError(f"Invalid {'JSON schema' if key[0] == 'json' else key[0]}: {e}") from None


def apply_token_budget(grammar: Any, max_new_tokens: int | None) -> str | None:
    """Give ``grammar`` the request's token budget; the 400 message when the shortest
    valid output cannot fit (None when it fits or the backend cannot tell)."""
    if max_new_tokens is None:
        return None
    grammar.set_token_budget(max_new_tokens)
    need = grammar.min_tokens_to_accept()
    if need is None or need <= max_new_tokens:
        return None
    if need >= UNREACHABLE:
        return "Invalid grammar: no complete output can be spelled with this model's vocabulary"
    return (f"max_new_tokens={max_new_tokens} is too small for this constraint: its shortest valid "
            f"output takes {need} tokens; set max_new_tokens (max_tokens) to at least {need}")


def within_budget(grammar: Any, tokens: list[int]) -> list[int]:
    """The longest prefix of ``tokens`` after which acceptance stays reachable in budget
    (a re-spelled forced string may take more tokens than the shortest way)."""
    if grammar.remaining_tokens() is None:
        return tokens
    g = grammar.copy()
    for n, tok in enumerate(tokens):
        if not g.accept_token(tok):
            return tokens[:n]
        need, left = g.min_tokens_to_accept(), g.remaining_tokens()
        if need is not None and left is not None and need > left:
            return tokens[:n]
    return tokens


class GrammarManager:
    def __init__(self, scheduler: "Scheduler"):
        self.scheduler = scheduler
        # --grammar-backend: outlines-core for regex/JSON/choices, xgrammar for EBNF and
        # json_object (or xgrammar for everything); see backend_router.py.
        args = scheduler.server_args
        backend = RoutedGrammarBackend(args.grammar_backend, scheduler.tokenizer,
                                       vocab_size=scheduler.vocab_size, eos_token_ids=sorted(scheduler.eos_token_ids),
                                       whitespace_pattern=args.constrained_json_whitespace_pattern)
        self.backend = backend
        self.cache = GrammarCache(backend, compile_timeout_s=args.grammar_compile_timeout)
        self.cache.pool.prestart(2)
        self.queue: list[tuple["Req", Any]] = []
        # Under TP every rank must release the same requests in the same step, and thread
        # timing differs per rank: compile synchronously there.
        self.synchronous = scheduler.server_args.tp_size > 1
        self.jump_forward = not scheduler.server_args.disable_jump_forward
        self.string_mode = scheduler.server_args.jump_forward_mode == "string"

    # ---- queue -------------------------------------------------------------------------
    def needs_grammar(self, req: "Req") -> bool:
        return grammar_key(req.sampling_params) is not None

    def add(self, req: "Req") -> bool:
        """Attach the request's grammar. True when it can be scheduled now; otherwise it
        waits in the grammar queue (or was rejected)."""
        kind_spec = grammar_key(req.sampling_params)
        assert kind_spec is not None  # only constrained requests are added
        req.grammar_key = make_key(*kind_spec)
        grammar, fut = self.cache.get_or_submit(req.grammar_key)
        if fut is not None and self.synchronous:
            grammar = None
            while grammar is None:  # the cache's compile timeout bounds this wait
                grammar = self.cache.poll(fut, timeout=1.0)
            fut = None
        if fut is not None:
            self.queue.append((req, fut))
            return False
        return self._attach(req, grammar)

    def _attach(self, req: "Req", grammar: Any) -> bool:
        if grammar is None or is_invalid(grammar):
            msg = getattr(grammar, "error", None) or "grammar compilation failed"
            self.scheduler.reject_req(req, f"Invalid grammar: {msg}")
            return False
        if getattr(req.sampling_params, "require_reasoning", False):
            grammar = self.backend.think_first(grammar)  # free <think>...</think>, then the grammar
        error = apply_token_budget(grammar, req.sampling_params.max_new_tokens)
        if error is not None:
            self.scheduler.reject_req(req, error)
            return False
        req.grammar = grammar
        return True

    def pop_ready(self) -> list["Req"]:
        """Requests whose grammar is now ready, in arrival order among themselves.  A slow
        compile does not hold back the requests behind it (no head-of-line blocking: a
        pathological spec must stall only its own request)."""
        ready, waiting = [], []
        for req, fut in self.queue:
            grammar = self.cache.poll(fut, timeout=0.0)
            if grammar is None:
                waiting.append((req, fut))
            elif self._attach(req, grammar):
                ready.append(req)
        self.queue = waiting
        return ready

    def abort(self, hit: Callable[["Req"], bool]) -> list["Req"]:
        gone = [r for r, _ in self.queue if hit(r)]
        self.queue = [(r, f) for r, f in self.queue if not hit(r)]
        return gone

    def has_pending(self) -> bool:
        return bool(self.queue)

    def num_pending(self) -> int:
        return len(self.queue)

    # ---- per step ------------------------------------------------------------------------
    def apply_mask(self, reqs: list["Req"], logits: torch.Tensor) -> None:
        rows = [i for i, r in enumerate(reqs) if r.grammar is not None]
        if not rows:
            return
        mask = self.backend.allocate_vocab_mask(logits.shape[-1], len(reqs), "cpu")
        for i in rows:
            try:
                reqs[i].grammar.fill_vocab_mask(mask, i)
            except Exception as e:  # a broken grammar must only end its own request
                logger.exception("grammar mask failed for %s", reqs[i].rid)
                reqs[i].to_abort, reqs[i].to_abort_message = True, f"grammar error: {e}"
        self.backend.apply_vocab_mask(logits, self.backend.move_vocab_mask(mask, logits.device))

    def accept(self, req: "Req", token: int) -> None:
        try:
            ok = req.grammar.accept_token(token)
        except Exception as e:
            ok, msg = False, f"grammar error: {e}"
        else:
            msg = f"token {token} is not allowed by the grammar"
        if not ok:
            req.to_abort, req.to_abort_message = True, msg

    def forced_tokens(self, req: "Req") -> list[int]:
        """Tokens the grammar forces next.

        Token mode: while exactly one token is allowed, take it; the output is then exactly
        what masked decoding would produce, greedy or sampled. String mode: the whole forced
        string (e.g. a fixed key), re-tokenized.
        """
        if not self.jump_forward or req.grammar is None:
            return []
        if self.string_mode:
            try:  # the forced bytes, spelled in tokens each checked against the grammar
                forced = list(req.grammar.try_jump_forward(self.scheduler.tokenizer) or [])[:MAX_JUMP_TOKENS]
                return within_budget(req.grammar, forced)
            except Exception:
                logger.exception("jump-forward failed for %s", req.rid)
                return []
        g = req.grammar.copy()
        out: list[int] = []
        eos = self.scheduler.eos_token_ids
        try:
            while len(out) < MAX_JUMP_TOKENS and not g.is_terminated():
                allowed = g.allowed_token_ids()
                if len(allowed) != 1 or allowed[0] in eos or not g.accept_token(allowed[0]):
                    break
                out.append(allowed[0])
        except Exception:
            logger.exception("jump-forward failed for %s", req.rid)
            return []
        return out

    def shutdown(self) -> None:
        self.cache.shutdown()
