#!/usr/bin/env python3
"""PyTorch twin of bench/src/bin/bert.rs: BERT-base (transformers BertForMaskedLM, random init,
float32) on the CPU with the same thread count: encode (BertModel forward under no_grad, eval) and
one MLM training step (train mode, dropout 0.1, 30% of positions labelled, backward,
torch.optim.AdamW), batch 8 x 128; and loading a checkpoint directory (time and peak RSS).

usage: bert_torch.py [--threads 2]          timings, JSON lines like the Rust side
       bert_torch.py --load DIR             load DIR with BertModel.from_pretrained
       bert_torch.py --profile [STEPS]      torch.profiler over STEPS (default 3) bf16 autocast
                                            MLM train steps after 2 warm-up steps: the per-op
                                            table (self CPU time), the twin of our per-op table
"""
import argparse
import json
import resource
import statistics
import sys
import time

import torch

BATCH, SEQ = 8, 128


def time_ms(fn, min_time=3.0):
    for _ in range(3):
        fn()
    samples, start = [], time.perf_counter()
    while len(samples) < 5 or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


def report(op, ms, **extra):
    print(json.dumps({"op": op, "shape": f"[{BATCH},{SEQ}]", "ms": ms, **extra}), flush=True)


def timings():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig())
    ids = torch.randint(1000, 30000, (BATCH, SEQ))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    labels = torch.where(torch.rand(BATCH, SEQ) < 0.3, ids, torch.full_like(ids, -100))

    model.eval()

    # f32, then under torch.autocast("cpu", bfloat16) (rows suffixed _bf16, as the Rust side's).
    for bf16, suffix in [(False, ""), (True, "_bf16")]:
        def encode():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model.bert(input_ids=ids, attention_mask=mask)

        ms = time_ms(encode)
        report(f"bert_encode{suffix}", ms)
        print(f"bert_encode{suffix}: {BATCH / ms * 1e3:.1f} sequences/s", file=sys.stderr)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    for bf16, suffix in [(False, ""), (True, "_bf16")]:
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        report(f"bert_mlm_train_step{suffix}", time_ms(step))


def profile(steps):
    """torch.profiler over bf16 autocast MLM train steps (the same step as `timings`' _bf16 row):
    ops by self CPU time, and the forward/backward/optimizer split."""
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig())
    ids = torch.randint(1000, 30000, (BATCH, SEQ))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    labels = torch.where(torch.rand(BATCH, SEQ) < 0.3, ids, torch.full_like(ids, -100))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def step():
        with record_function("phase:forward"), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
        with record_function("phase:backward"):
            out.loss.backward()
        with record_function("phase:optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    t = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    ms = (time.perf_counter() - t) * 1e3 / steps
    print(f"# torch bf16 autocast MLM train step, {steps} steps profiled: {ms:.1f} ms/step "
          "(with the profiler on)")
    avg = prof.key_averages()
    print(avg.table(sort_by="self_cpu_time_total", row_limit=45))
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=40))


def load(path):
    from transformers import BertModel

    t = time.perf_counter()
    BertModel.from_pretrained(path)
    ms = (time.perf_counter() - t) * 1e3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"op": "bert_load", "shape": "bert-base", "ms": ms, "peak_rss_mib": peak}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--load", metavar="DIR")
    ap.add_argument("--profile", nargs="?", type=int, const=3, metavar="STEPS")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(json.dumps({"torch": torch.__version__, "threads": a.threads}), file=sys.stderr)
    if a.load:
        load(a.load)
    elif a.profile:
        profile(a.profile)
    else:
        timings()


if __name__ == "__main__":
    main()
