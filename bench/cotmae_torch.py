#!/usr/bin/env python3
"""PyTorch twin of bench/src/bin/cotmae_step.rs: one CoT-MAE pretraining step on the CPU with the
same thread count. The model is the parity script's `CotMae` (scripts/gen_cotmae_fixtures.py: a
transformers BertForMaskedLM plus two BertLayers wired as the original BertForCotMAE) at
bert-base shape, random init, float32, train mode (dropout 0.1), head_mlm_coef 1.0. One step:
forward (encoder and decoder MLM losses, full-vocabulary logits as in the original), backward,
torch.nn.utils.clip_grad_norm_(1.0), torch.optim.AdamW (lr 1e-4, weight decay 0.01 except biases
and LayerNorm weights, as the HF Trainer groups them), zero_grad. The batch is the file the Rust
side wrote (`cotmae_step batch FILE`), so both time the same batch.

Attention is transformers' default "sdpa" kernel (the faster torch baseline); --attn eager times
the exact implementation the parity fixture uses.

usage: cotmae_torch.py FILE [--threads 2] [--tiny] [--warmup 2] [--iters 5] [--attn sdpa|eager]
Prints one JSON line {"op", "shape", "ms"} (median step time) like the Rust side.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import BertConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from gen_cotmae_fixtures import CotMae  # noqa: E402

NO_DECAY = ["bias", "LayerNorm.weight"]
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, "attn": a.attn}), file=sys.stderr)

    batch = load_file(a.batch)
    torch.manual_seed(0)
    model = CotMae(BertConfig(**(TINY if a.tiny else {})), 2, 1.0, attn_implementation=a.attn)
    model.train()
    params = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in params if not any(nd in n for nd in NO_DECAY)], "weight_decay": 0.01},
            {"params": [p for n, p in params if any(nd in n for nd in NO_DECAY)], "weight_decay": 0.0},
        ],
        lr=1e-4,
    )

    def step():
        enc, head, loss = model(batch)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return enc.item(), head.item(), norm.item()

    enc, head, norm = step()
    print(f"first step: encoder loss {enc:.4f}, head loss {head:.4f}, grad norm {norm:.3f}", file=sys.stderr)
    for _ in range(1, a.warmup):
        step()
    ms = []
    for _ in range(max(1, a.iters)):
        t = time.perf_counter()
        step()
        ms.append((time.perf_counter() - t) * 1e3)
    rows, seq = batch["input_ids"].shape
    shape = f"[{rows},{seq}] {'tiny' if a.tiny else 'bert-base'}"
    print(json.dumps({"op": "cotmae_train_step", "shape": shape, "ms": statistics.median(ms)}), flush=True)
    print(f"step ms: {[round(x) for x in sorted(ms)]}", file=sys.stderr)


if __name__ == "__main__":
    main()
