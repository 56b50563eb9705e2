"""SglFunction: what ``@sglite.function`` returns (run, run_batch, bind, trace)."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Union

from sglite.protocol.sampling import SglSamplingParams


def _defaults(**kw: Any) -> SglSamplingParams:
    kw["stop"] = [] if kw["stop"] is None else kw["stop"]
    kw["stop_token_ids"] = [] if kw["stop_token_ids"] is None else kw["stop_token_ids"]
    kw["stop_regex"] = [] if kw["stop_regex"] is None else kw["stop_regex"]
    return SglSamplingParams(**kw)


class SglFunction:
    """A program: a Python function whose first parameter is the state ``s``."""

    def __init__(self, func: Callable[..., Any], num_api_spec_tokens: Optional[int] = None,
                 bind_arguments: Optional[dict[str, Any]] = None) -> None:
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bind_arguments = dict(bind_arguments or {})
        params = list(inspect.signature(func).parameters.values())
        if not params or params[0].name != "s":
            raise AssertionError("the first parameter of an sglite function must be named 's'")
        self.arg_names = [p.name for p in params[1:]
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        self.arg_defaults = {p.name: p.default for p in params[1:] if p.default is not p.empty}
        self.__name__ = getattr(func, "__name__", "sglite_function")
        self.__doc__ = func.__doc__

    def bind(self, **kwargs: Any) -> "SglFunction":
        """Partial application: a new SglFunction with these arguments fixed."""
        unknown = set(kwargs) - set(self.arg_names)
        if unknown:
            raise TypeError(f"{self.__name__}() has no parameters {sorted(unknown)}")
        return SglFunction(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def _param_default(self, name: str) -> Any:
        return inspect.signature(self.func).parameters[name].default

    def _call_kwargs(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        free = [n for n in self.arg_names if n not in self.bind_arguments]
        if len(args) > len(free):
            raise TypeError(f"{self.__name__}() takes {len(free)} positional arguments, got {len(args)}")
        out = {**self.bind_arguments, **dict(zip(free, args))}
        for k, v in kwargs.items():
            if k in out:
                raise TypeError(f"{self.__name__}() got multiple values for argument {k!r}")
            out[k] = v
        return out

    def run(self, *args: Any, max_new_tokens: int = 128, n: int = 1,
            stop: Union[None, str, list[str]] = None, stop_token_ids: Optional[list[int]] = None,
            stop_regex: Union[None, str, list[str]] = None,
            temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0,
            frequency_penalty: float = 0.0, presence_penalty: float = 0.0, ignore_eos: bool = False,
            return_logprob: Optional[bool] = None, logprob_start_len: Optional[int] = None,
            top_logprobs_num: Optional[int] = None, return_text_in_logprobs: Optional[bool] = None,
            stream: bool = False, backend: Any = None, seed: Optional[int] = None,
            use_thread: bool = True, compile: Union[bool, str] = False, **kwargs: Any):
        """Run the program once; the sampling arguments are defaults every gen may override.

        Returns a ProgramState at once (gens run on a worker thread); with
        ``stream=True`` the function itself also runs on its own thread.
        ``compile="auto"`` sends the traced graph in one round trip when the
        program is static and the backend runs graphs (else interprets, logging
        why); ``compile=True`` raises NotCompilable instead; ``False`` (the
        default) always interprets.
        """
        from sglite.lang.interpreter import run_program

        defaults = _defaults(
            max_new_tokens=max_new_tokens, n=n, stop=stop, stop_token_ids=stop_token_ids,
            stop_regex=stop_regex,
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            ignore_eos=ignore_eos, return_logprob=return_logprob, logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs, seed=seed,
        )
        call_kwargs = self._call_kwargs(args, kwargs)
        if compile is not False:
            from sglite.lang.compiler import run_maybe_compiled

            state = run_maybe_compiled(self, call_kwargs, defaults, backend, stream, compile)
            if state is not None:
                return state
        return run_program(self.func, backend, (), call_kwargs, defaults, stream=stream,
                           use_thread=use_thread)

    def run_batch(self, batch_kwargs: list[Any], *, max_new_tokens: int = 128, n: int = 1,
                  stop: Union[None, str, list[str]] = None, stop_token_ids: Optional[list[int]] = None,
                  stop_regex: Union[None, str, list[str]] = None,
                  temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0,
                  frequency_penalty: float = 0.0, presence_penalty: float = 0.0, ignore_eos: bool = False,
                  return_logprob: Optional[bool] = None, logprob_start_len: Optional[int] = None,
                  top_logprobs_num: Optional[int] = None, return_text_in_logprobs: Optional[bool] = None,
                  backend: Any = None, num_threads: Union[str, int] = "auto", progress_bar: bool = False,
                  generator_style: bool = False, seed: Optional[int] = None,
                  compile: Union[bool, str] = False):
        """Run the program once per element of ``batch_kwargs`` (dicts, or positional tuples).

        Programs run concurrently on a thread pool (``num_threads``; "auto" is
        ``max(96, 16 * cpu_count)`` capped at the batch size) and each is synced;
        the states come back in input order. ``progress_bar`` shows a tqdm bar.
        ``compile`` as in :meth:`run`: compiled programs go to the runtime in ONE call.
        ``generator_style=True`` returns a generator of states in input order instead of a
        list, submitting 200 programs at a time (SGLang's behaviour).
        """
        from sglite.lang.interpreter import run_program_batch

        if not batch_kwargs:
            return []
        normalized = [self._batch_item_kwargs(item) for item in batch_kwargs]
        defaults = _defaults(
            max_new_tokens=max_new_tokens, n=n, stop=stop, stop_token_ids=stop_token_ids,
            stop_regex=stop_regex,
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            ignore_eos=ignore_eos, return_logprob=return_logprob, logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs, seed=seed,
        )
        if generator_style:
            if compile is not False:
                raise ValueError("run_batch: generator_style and compile cannot be combined")
            from sglite.lang.interpreter import run_program_batch_iter

            states = run_program_batch_iter(self.func, backend, normalized, defaults, num_threads)
            if progress_bar:
                from tqdm.auto import tqdm

                return iter(tqdm(states, total=len(normalized)))
            return states
        if compile is not False:
            return self._run_batch_compiled(normalized, defaults, backend, num_threads, progress_bar, compile)
        return run_program_batch(self.func, backend, normalized, defaults, num_threads, progress_bar)

    def _batch_item_kwargs(self, item: Any) -> dict[str, Any]:
        """One ``run_batch`` element (a dict of arguments, or a positional tuple) as call kwargs."""
        if isinstance(item, dict):
            return self._call_kwargs((), item)
        if not isinstance(item, (list, tuple)):
            raise TypeError(f"batch items must be dicts or tuples, got {type(item).__name__}")
        free = [n_ for n_ in self.arg_names if n_ not in self.bind_arguments]
        required = [a for a in free if self._param_default(a) is inspect.Parameter.empty]
        if not len(required) <= len(item) <= len(free):
            raise TypeError(f"expected {len(required)} to {len(free)} positional arguments {free}, "
                            f"got {len(item)}")
        return self._call_kwargs(tuple(item), {})

    def _run_batch_compiled(self, normalized: list[dict[str, Any]], defaults: Any, backend: Any,
                            num_threads: Union[str, int], progress_bar: bool, compile: Union[bool, str]) -> list:
        """``run_batch(compile=...)``: compiled programs go in ONE backend call, the rest are interpreted."""
        from sglite.lang.compiler import run_batch_maybe_compiled
        from sglite.lang.interpreter import new_progress_bar, run_program_batch

        bar = new_progress_bar(len(normalized)) if progress_bar else None
        try:
            states, rest = run_batch_maybe_compiled(self, normalized, defaults, backend, compile)
            if bar is not None:  # the compiled programs ran in one call
                bar.update(len(normalized) - len(rest))
            if rest:
                interpreted = run_program_batch(self.func, backend, [normalized[i] for i in rest], defaults,
                                                num_threads, bar if bar is not None else False)
                for i, st in zip(rest, interpreted):
                    states[i] = st
        finally:
            if bar is not None:
                bar.close()
        return states

    def compile(self, *args: Any, **kwargs: Any):
        """Trace this program with all its arguments into a ``CompiledProgram``.

        Raises ``sglite.lang.tracer.NotCompilable`` (with the offending source
        line) when the program's structure depends on generated values.
        """
        from sglite.lang.compiler import compile_function

        return compile_function(self, self._call_kwargs(args, kwargs))

    def cache(self, backend: Any = None) -> None:
        """Pre-cache the program's static prefix on ``backend`` (SGLang's ``cache``)."""
        from sglite.lang.interpreter import cache_program

        cache_program(self, backend)

    def trace(self, *, backend: Any = None, **kwargs: Any):
        """Record the program as an expression graph (``sglite.lang.tracer``)."""
        from sglite.lang.tracer import trace_program

        return trace_program(self, kwargs, backend)

    def __call__(self, *args: Any, **kwargs: Any):
        return self.run(*args, **kwargs)
