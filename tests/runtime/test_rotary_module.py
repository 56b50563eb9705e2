"""RotaryEmbedding is an ordinary nn.Module: ``.to()``/``.double()`` reach its buffers.

It once named its rotation helper ``_apply``, shadowing the hook nn.Module's conversions call
on every submodule, so moving a model that holds one raised TypeError (found by mypy).
"""

from __future__ import annotations

import torch

from sglite_runtime.layers.rotary_embedding import get_rope


def test_module_conversions_reach_the_rope_tables():
    rope = get_rope(8, 16)
    model = torch.nn.Sequential(rope)
    model.to(torch.float64)
    assert rope.cos_cache.dtype == torch.float64 and rope.sin_cache.dtype == torch.float64
    q = torch.randn(3, 2 * 8, dtype=torch.float64)
    k = torch.randn(3, 8, dtype=torch.float64)
    q_out, k_out = rope(torch.arange(3), q, k)
    assert q_out.shape == q.shape and k_out.shape == k.shape
    # Position 0 does not rotate.
    torch.testing.assert_close(q_out[0], q[0])
