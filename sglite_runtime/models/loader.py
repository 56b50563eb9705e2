"""Safetensors weight loading: one ``model.safetensors`` or a sharded index, streamed.

Tensors are read one at a time with ``safetensors.safe_open`` and handed to each parameter's
``weight_loader`` (which takes this TP rank's slice), so peak extra memory is one tensor.
HF names map 1:1 onto sglite modules except the fused ones, listed in the model's
``stacked_params_mapping`` (q/k/v → ``qkv_proj``, gate/up → ``gate_up_proj``), and those a
model maps itself with ``map_checkpoint_name(name) -> (param, shard) | None`` (MoE experts),
declaring the shards each such param needs in ``required_shards() -> {param: {shard, ...}}``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from torch import nn

if TYPE_CHECKING:
    from sglite_runtime.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)

_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"


def safetensors_files(model_path: str) -> list[str]:
    """The checkpoint files of a model folder: the sharded index's files, else the single file."""
    index = os.path.join(model_path, _INDEX)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(model_path, name) for name in sorted(set(weight_map.values()))]
    single = os.path.join(model_path, _SINGLE)
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"no {_SINGLE} or {_INDEX} in {model_path!r}")


def iterate_weights(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, cpu_tensor)`` for every tensor of the checkpoint, one file at a time."""
    for path in safetensors_files(model_path):
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _skip(name: str, tied: bool) -> bool:
    if "rotary_emb.inv_freq" in name or "rotary_emb.cos_cached" in name or "rotary_emb.sin_cached" in name:
        return True
    # Tied heads reuse the embedding table; some checkpoints still store a copy.
    return tied and name == "lm_head.weight"


def load_weights_from_iter(model: nn.Module, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Load ``(hf_name, tensor)`` pairs into ``model``; raise on unexpected or missing weights."""
    params = dict(model.named_parameters())
    mapping: list[tuple[str, str, Any]] = list(getattr(model, "stacked_params_mapping", []))
    tied = bool(getattr(model, "tie_word_embeddings", False))
    # Which shards each fused param needs before it counts as loaded.
    needed: dict[str, set] = {name: set() for name in params}
    for fused, _, shard in mapping:
        for pname in params:
            if f".{fused}." in f".{pname}":
                needed[pname].add(shard)
    required_shards = getattr(model, "required_shards", None)  # optional model hook
    if required_shards is not None:
        for pname, shards in required_shards().items():
            needed[pname] |= set(shards)
    name_map = getattr(model, "map_checkpoint_name", None)
    got: dict[str, set] = {name: set() for name in params}
    unexpected: list[str] = []
    with torch.no_grad():
        for name, tensor in weights:
            if _skip(name, tied):
                continue
            target, shard = name, None
            mapped = name_map(name) if name_map is not None else None
            if mapped is not None:
                target, shard = mapped
            else:
                for fused, ckpt, shard_id in mapping:
                    if f".{ckpt}." in name:
                        target, shard = name.replace(f".{ckpt}.", f".{fused}."), shard_id
                        break
            param = params.get(target)
            if param is None:
                unexpected.append(name)
                continue
            loader = getattr(param, "weight_loader", None)
            if loader is None:
                if param.shape != tensor.shape:
                    raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != parameter {tuple(param.shape)}")
                param.data.copy_(tensor)
            elif shard is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard)
            got[target].add(shard)
    if unexpected:
        raise ValueError(f"checkpoint has {len(unexpected)} weights the model does not use: {unexpected[:10]}")
    missing: list[str] = []
    for pname, shards in needed.items():
        have = got[pname]
        if shards and not shards <= have:
            missing.extend(f"{pname}[{s}]" for s in sorted(shards - have, key=str))
        elif not shards and not have:
            missing.append(pname)
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} weights: {missing[:10]}")


def load_weights(model: nn.Module, model_path: str) -> None:
    """Stream the safetensors checkpoint in ``model_path`` into ``model`` (cast to param dtypes)."""
    load_weights_from_iter(model, iterate_weights(model_path))
    logger.info("loaded weights from %s", model_path)


def resolve_dtype(hf_config: Any, dtype: torch.dtype | str | None = None) -> torch.dtype:
    """The model dtype: ``dtype`` if given ("auto" means the config's), else the config's
    ``dtype``/``torch_dtype``, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in (None, "auto"):
        name = {"half": "float16", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "float": "float32"}.get(
            dtype, dtype
        )
        resolved = getattr(torch, name, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        return resolved
    for attr in ("dtype", "torch_dtype"):
        value = getattr(hf_config, attr, None)
        if isinstance(value, torch.dtype):
            return value
        if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
            return getattr(torch, value)
    return torch.float32


def load_model(
    model_path: str,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[LlamaForCausalLM, Any]:
    """Build the sglite model for ``model_path`` (a folder or a Hub id) on ``device`` and load
    its weights, cast to ``dtype`` (default: the config's) whatever dtype the checkpoint stores.

    Parameters are allocated uninitialized (``torch.empty``) directly on ``device``, so
    building costs no init time and no second copy; the loader then fills every one of them.
    Returns ``(model, hf_config)``.
    """
    from transformers import AutoConfig

    from sglite_runtime.models.registry import get_model_class
    from sglite_runtime.utils.hf_utils import resolve_model_path

    model_path = resolve_model_path(model_path, revision)
    # trust_remote_code: a config class shipped as code in the folder (the model itself must
    # still be one of sglite's architectures).
    hf_config = AutoConfig.from_pretrained(model_path, local_files_only=True, trust_remote_code=trust_remote_code)
    model_dtype = resolve_dtype(hf_config, dtype)
    cls = get_model_class(hf_config)
    with torch.device(device):
        model = cls(hf_config, dtype=model_dtype)
    load_weights(model, model_path)
    model.eval()
    return model, hf_config
