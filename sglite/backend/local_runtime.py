"""``sglite.Runtime``: a local server plus a ``RuntimeEndpoint`` for it, as in SGLang.

It lives on the client side because it hands out a client backend; the server side
(``sglite_runtime.entrypoints.launcher.launch_server``) knows nothing of the client.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from sglite.backend.runtime_endpoint import RuntimeEndpoint

if TYPE_CHECKING:
    from sglite_runtime.entrypoints.launcher import ServerHandle


class Runtime:
    """A local server for the frontend language, as in SGLang: ``Runtime(model_path=...)``.

    ``.url`` is the server address and ``.endpoint`` a ``sglite.RuntimeEndpoint`` for
    ``sglite.set_default_backend``. The server is shut down at interpreter exit.
    """

    def __init__(self, log_level: str = "error", launch_timeout: float = 300.0, **server_args: Any):
        import atexit

        from sglite_runtime.entrypoints.launcher import launch_server  # on use: keeps `import sglite` light

        self._handle: Optional[ServerHandle] = launch_server(log_level=log_level, timeout=launch_timeout,
                                                             **server_args)
        self.url = self._handle.url
        self.port = self._handle.port
        self.pid = self._handle.process.pid
        self.endpoint = RuntimeEndpoint(self.url, api_key=server_args.get("api_key"))
        atexit.register(self.shutdown)

    def shutdown(self) -> None:
        """Stop the server (safe to call twice)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.shutdown()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:
            pass
