#!/usr/bin/env python3
"""PyTorch twin of bench/src/bin/gpu_step.rs: one training step on the GPU, timed with CUDA
events, on the batch file the Rust side wrote, so both time the same batch.

  bert    transformers BertForMaskedLM (bert-base, random init, dropout 0.1): forward with the MLM
          loss, backward, clip_grad_norm_(1.0), torch.optim.AdamW, zero_grad.
  cotmae  the parity script's CotMae (scripts/gen_cotmae_fixtures.py: BertForMaskedLM plus two
          BertLayers wired as the original BertForCotMAE), head_mlm_coef 1.0, same step.

Precision: bf16 runs the forward under torch.autocast(dtype=bfloat16) with fp32 weights and
optimizer state, no loss scaling (what `--bf16` does in the HF Trainer); fp16 adds the
GradScaler (`--fp16`); fp32 runs plain fp32 (TF32 off). AdamW weight decay 0.01 except biases and
LayerNorm weights, lr 1e-4, torch's default (foreach) implementation.

usage: gpu_step_torch.py {bert,cotmae} FILE [--precision bf16|fp16|fp32] [--warmup 3]
                         [--iters 20] [--device cuda] [--attn sdpa|eager] [--tiny]
Prints one JSON line {"op", "shape", "ms"} (median step time) like the Rust side; the first step's
losses, the peak memory and all times go to stderr. `--device cpu --tiny` is a smoke test only.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from gen_cotmae_fixtures import CotMae  # noqa: E402

NO_DECAY = ["bias", "LayerNorm.weight"]
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class Bert(torch.nn.Module):
    """BertForMaskedLM returning (loss, loss) so both models step the same way."""

    def __init__(self, config, attn):
        super().__init__()
        self.lm = BertForMaskedLM._from_config(config, attn_implementation=attn)

    def forward(self, b):
        loss = self.lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        return loss, loss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["bert", "cotmae"])
    ap.add_argument("batch")
    ap.add_argument("--precision", choices=list(DTYPES), default="bf16")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name(dev) if cuda else "cpu"}
    print(json.dumps({**info, "precision": a.precision, "attn": a.attn}), file=sys.stderr)

    batch = {k: v.to(dev) for k, v in load_file(a.batch).items()}
    torch.manual_seed(0)
    config = BertConfig(**(TINY if a.tiny else {}))
    if a.model == "bert":
        model = Bert(config, a.attn)
    else:
        model = CotMae(config, 2, 1.0, attn_implementation=a.attn)
    model.to(dev).train()
    params = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in params if not any(nd in n for nd in NO_DECAY)], "weight_decay": 0.01},
            {"params": [p for n, p in params if any(nd in n for nd in NO_DECAY)], "weight_decay": 0.0},
        ],
        lr=1e-4,
    )
    dtype = DTYPES[a.precision]
    scaler = torch.amp.GradScaler(dev.type, enabled=a.precision == "fp16")

    def step():
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            enc, head = model(batch)[:2]
            loss = enc + head if a.model == "cotmae" else enc
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return enc, head, norm

    enc, head, norm = step()
    print(f"first step: loss {enc.item():.4f} / {head.item():.4f}, grad norm {norm.item():.3f}", file=sys.stderr)
    for _ in range(1, max(1, a.warmup)):
        step()
    ms = []
    for _ in range(max(1, a.iters)):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            ms.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            step()
            ms.append((time.perf_counter() - t) * 1e3)
    rows, seq = batch["input_ids"].shape
    shape = f"[{rows},{seq}] {'tiny' if a.tiny else 'bert-base'} {a.precision}"
    print(json.dumps({"op": f"{a.model}_train_step", "shape": shape, "ms": statistics.median(ms)}), flush=True)
    if cuda:
        print(f"peak memory: {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB", file=sys.stderr)
    print(f"step ms: {[round(x, 1) for x in sorted(ms)]}", file=sys.stderr)


if __name__ == "__main__":
    main()
