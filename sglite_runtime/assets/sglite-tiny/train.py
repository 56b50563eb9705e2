"""Train sglite-tiny, the small Llama model that ships with sglite.

Everything is built locally and seeded, nothing is downloaded:

* corpus: ``pydoc_data.topics`` (the text behind ``help('topic')``), docstrings of a
  fixed list of stdlib modules, generated chat turns rendered with the chat template
  and generated JSON records;
* tokenizer: byte-level BPE (``tokenizers``), so every byte sequence round-trips;
* model: ``transformers.LlamaForCausalLM`` (GQA, tied embeddings, float32), trained
  with a plain AdamW loop and a cosine schedule on CPU.

Usage::

    python sglite_runtime/assets/sglite-tiny/train.py --out sglite_runtime/assets/sglite-tiny
    python sglite_runtime/assets/sglite-tiny/train.py --out /tmp/tiny --quick   # smoke run

The corpus depends on the Python version's stdlib docstrings (3.11 was used for the
shipped weights), so other interpreters give a slightly different, equally valid model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from corpus import CHAT_TEMPLATE, SPECIAL_TOKENS, build_documents

logger = logging.getLogger("sglite-tiny")

SEED = 1234
CONTEXT_LEN = 1024
SEQ_LEN = 256
VOCAB_SIZE = 4096


def train_tokenizer(texts: list[str], vocab_size: int):
    """Train a byte-level BPE whose specials get ids 0..4 (``<|endoftext|>`` is 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: a leading space would break decode(encode(s)) == s.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def save_tokenizer_files(tok: Any, out: str) -> None:
    """Write tokenizer.json plus the HF side files so AutoTokenizer loads it offline."""
    tok.save(os.path.join(out, "tokenizer.json"))
    eos = SPECIAL_TOKENS[0]
    added = {
        str(tok.token_to_id(t)): {
            "content": t, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False, "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "eos_token": eos,
        "pad_token": eos,
        "unk_token": None,
        "model_max_length": CONTEXT_LEN,
        "add_bos_token": False,
        "add_eos_token": False,
        # Cleanup would rewrite " ." to "." and break byte-exact round trips.
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": eos, "pad_token": eos,
                   "additional_special_tokens": list(SPECIAL_TOKENS[1:])}, f, indent=2)


def build_model(vocab_size: int, eos_id: int, n_layers: int):
    """Llama with GQA (6 query heads, 2 KV heads, head_dim 32) and tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=192,
        intermediate_size=448,
        num_hidden_layers=n_layers,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=32,  # a power of two keeps attention kernels simple
        hidden_act="silu",
        max_position_embeddings=CONTEXT_LEN,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        torch_dtype="float32",
    )
    try:
        config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    except Exception:  # older transformers keep rope_theta only
        pass
    return LlamaForCausalLM(config)


def encode_stream(tok: Any, docs: list[str], eos_id: int) -> torch.Tensor:
    """Concatenate documents into one token stream, each ended by ``<|endoftext|>``."""
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def evaluate(model: Any, stream: torch.Tensor, seq_len: int, max_windows: int) -> float:
    """Mean next-token NLL over non-overlapping windows of the held-out stream."""
    model.eval()
    n = min((len(stream) - 1) // seq_len, max_windows)
    total, count = 0.0, 0
    for start in range(0, n, 8):
        rows = range(start, min(start + 8, n))
        x = torch.stack([stream[i * seq_len:(i + 1) * seq_len] for i in rows])
        y = torch.stack([stream[i * seq_len + 1:(i + 1) * seq_len + 1] for i in rows])
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                                 reduction="sum")
        total += loss.item()
        count += y.numel()
    model.train()
    return total / max(count, 1)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder for the HF model")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=10.0,
                    help="wall-clock cap for the training loop; when it binds, the cosine "
                         "schedule is compressed so the LR still anneals (shared CPUs)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (few steps, small eval)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quick:
        args.steps = min(args.steps, 20)

    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    train_docs, heldout_docs, sources = build_documents(SEED)
    logger.info("documents: %d train, %d held-out, sources %s", len(train_docs), len(heldout_docs), sources)

    tok = train_tokenizer(train_docs, VOCAB_SIZE)
    eos_id = tok.token_to_id(SPECIAL_TOKENS[0])
    end_id = tok.token_to_id("<|end|>")
    save_tokenizer_files(tok, args.out)
    train_stream = encode_stream(tok, train_docs, eos_id)
    heldout_stream = encode_stream(tok, heldout_docs, eos_id)
    logger.info("tokens: %d train, %d held-out (vocab %d), prep %.1fs",
                len(train_stream), len(heldout_stream), tok.get_vocab_size(), time.time() - t0)

    # A small, fixed held-out sample for the unit test: the first held-out documents.
    sample, size = [], 0
    for d in heldout_docs:
        if size > 3000:
            break
        sample.append(d)
        size += len(d)
    with open(os.path.join(args.out, "heldout.txt"), "w") as f:
        f.write("<|endoftext|>".join(sample))

    model = build_model(tok.get_vocab_size(), eos_id, args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model parameters: %d", n_params)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(SEED)
    warmup = max(1, min(50, args.steps // 10))
    model.train()
    t_train = time.time()
    ema = None
    budget_s = args.max_minutes * 60.0
    steps_done = 0
    bar = tqdm(range(args.steps), desc="train", mininterval=5.0)
    for step in bar:
        # Progress is the larger of step and time fractions: with an idle CPU the run is
        # step-bound and bit-reproducible; on a loaded one it still ends, annealed, in time.
        elapsed = time.time() - t_train
        if elapsed >= budget_s:
            logger.warning("time cap %.1f min reached at step %d/%d", args.max_minutes, step, args.steps)
            break
        eff_step = max(step, int(args.steps * elapsed / budget_s))
        for g in opt.param_groups:
            g["lr"] = lr_at(eff_step, args.steps, args.lr, warmup)
        starts = torch.randint(0, len(train_stream) - SEQ_LEN - 1, (args.batch,), generator=gen)
        x = torch.stack([train_stream[s:s + SEQ_LEN] for s in starts.tolist()])
        y = torch.stack([train_stream[s + 1:s + SEQ_LEN + 1] for s in starts.tolist()])
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{opt.param_groups[0]['lr']:.2e}", refresh=False)
        steps_done = step + 1
    train_seconds = time.time() - t_train

    max_windows = 8 if args.quick else 64
    heldout_nll = evaluate(model, heldout_stream, SEQ_LEN, max_windows)
    logger.info("train loss (ema) %.3f, held-out nll %.3f ppl %.2f (uniform ppl %d), train %.0fs",
                ema, heldout_nll, math.exp(heldout_nll), tok.get_vocab_size(), train_seconds)

    model.generation_config.eos_token_id = [eos_id, end_id]
    model.generation_config.pad_token_id = eos_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(args.out, safe_serialization=True)
    # transformers 5 writes only rope_parameters; keep the classic top-level keys too so
    # runtimes that read config.json directly (and older transformers) find them.
    cfg_path = os.path.join(args.out, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.setdefault("rope_theta", 10000.0)
    cfg.setdefault("torch_dtype", "float32")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    report = {
        "seed": SEED,
        "python": ".".join(map(str, sys.version_info[:3])),
        "torch": torch.__version__,
        "params": n_params,
        "vocab_size": tok.get_vocab_size(),
        "seq_len": SEQ_LEN,
        "steps": steps_done,
        "steps_planned": args.steps,
        "time_cap_bound": steps_done < args.steps,
        "threads": args.threads,
        "batch": args.batch,
        "peak_lr": args.lr,
        "tokens_seen": steps_done * args.batch * SEQ_LEN,
        "train_docs": len(train_docs),
        "heldout_docs": len(heldout_docs),
        "train_tokens": len(train_stream),
        "heldout_tokens": len(heldout_stream),
        "sources": sources,
        "train_loss_ema": round(ema, 4),
        "heldout_nll": round(heldout_nll, 4),
        "heldout_ppl": round(math.exp(heldout_nll), 3),
        "heldout_eval_tokens": min((len(heldout_stream) - 1) // SEQ_LEN, max_windows) * SEQ_LEN,
        "uniform_ppl": tok.get_vocab_size(),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t0, 1),
        "quick": args.quick,
    }
    with open(os.path.join(args.out, "training_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
