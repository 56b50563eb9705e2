"""Triton kernels for sglite (paged extend/decode attention, ...), each with a torch reference.

Kept import-light on purpose: importing this package must not import triton (the env var
``TRITON_INTERPRET`` has to be set before triton loads for CPU runs), and it must not look like
the Hugging Face hub ``kernels`` package (no ``__version__``, no hub API), otherwise
``transformers.utils.is_kernels_available()`` would turn True. Import submodules directly:
``from kernels.decode_attention import decode_attention_fwd``.
"""
