"""Detokenizer process entry point: PULL ``BatchTokenIDOut`` from the scheduler, turn token ids
into text deltas with a ``DetokenizerManager``, PUSH ``BatchStrOut`` to the TokenizerManager."""

from __future__ import annotations

from multiprocessing.connection import Connection

import zmq

from sglite_runtime.entrypoints.process_utils import PortArgs, configure_child_process
from sglite_runtime.managers.detokenizer_manager import DetokenizerManager
from sglite_runtime.managers.io_struct import BatchTokenIDOut, decode, encode
from sglite_runtime.server_args import ServerArgs
from sglite_runtime.utils.hf_utils import get_tokenizer


def run_detokenizer_process(server_args: ServerArgs, port_args: PortArgs, pipe_writer: Connection) -> None:
    """Process entry: PULL BatchTokenIDOut from the scheduler, PUSH BatchStrOut to the tokenizer manager."""
    configure_child_process(server_args, "detokenizer")
    assert server_args.tokenizer_path is not None  # ServerArgs.__post_init__ defaults it
    try:
        manager = DetokenizerManager(
            get_tokenizer(server_args.tokenizer_path, server_args.revision, server_args.trust_remote_code))
        ctx = zmq.Context(2)
        recv = ctx.socket(zmq.PULL)
        recv.bind(port_args.detokenizer_ipc)
        send = ctx.socket(zmq.PUSH)
        send.connect(port_args.tokenizer_ipc)
    except Exception as e:  # report to the launcher instead of dying silently
        pipe_writer.send({"status": "error", "message": f"detokenizer failed to start: {e!r}"})
        raise
    pipe_writer.send({"status": "ready"})
    while True:
        msg = decode(recv.recv())
        if isinstance(msg, BatchTokenIDOut):
            send.send(encode(manager.handle_batch_token_id_out(msg)))
