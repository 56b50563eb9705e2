"""The program protocol: what the client (interpreter, compiler) and the server's program executor share.

Torch-free and free of any client code (no ``sglite.backend``, no interpreter): the runtime
imports this package and nothing else from ``sglite``, so the two sides cannot drift.

* ``sampling``: ``SglSamplingParams``, typed-gen regexes and ``typed_completion``;
* ``chat_template``: role rendering (``ChatTemplate.prefix/suffix``);
* ``choices``: the ``select`` methods (decision from scored logprobs);
* ``select``: a select split into the requests to send and the decision from their results;
* ``graph``: the compiled request graph (JSON form, validation).
"""
