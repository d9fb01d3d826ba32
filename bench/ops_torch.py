#!/usr/bin/env python3
"""PyTorch reference timings for the tensor crate's op benchmark (BERT-base shapes, float32).

Prints one JSON object per line on stdout: {"op": ..., "shape": ..., "ms": median}. The op list,
names and shapes are fixed and documented in bench/README.md; the Rust benchmark prints the same
names so a runner can join the two outputs. Environment details go to stderr.

    python3 bench/ops_torch.py [--threads 2] [--device cpu|cuda] [--min-time 0.5] [--only a,b]
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

VOCAB = 30522
HIDDEN = 768
FFN = 3072
TOKENS = 1024  # 8 sequences x 128 tokens
BATCH, HEADS, SEQ, HEAD_DIM = 8, 12, 128, 64
LN_EPS = 1e-12
SCALE = 1.0 / 8.0  # 1 / sqrt(HEAD_DIM)
MASKED = 307  # ~30% of TOKENS: the positions the MLM loss is computed at
IGNORE = -100


def shape_str(*shapes):
    return ", ".join("[" + ",".join(str(d) for d in s) + "]" for s in shapes)


def build_cases(dev):
    """(op, shape string, zero-argument function to time) for every benchmarked op."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*s):
        return torch.randn(*s, generator=g).to(dev)

    cases = []

    # ---- matmul: C[m, n] = A[m, k] @ B[k, n], contiguous operands ----
    for m, k, n in ((TOKENS, HIDDEN, FFN), (TOKENS, FFN, HIDDEN), (TOKENS, HIDDEN, HIDDEN)):
        a, b = randn(m, k), randn(k, n)
        cases.append((f"matmul_{m}x{k}x{n}", shape_str((m, k), (k, n)), lambda a=a, b=b: a @ b))

    # ---- batched attention matmuls: scores = Q @ K^T, context = P @ V ----
    q, kt = randn(BATCH, HEADS, SEQ, HEAD_DIM), randn(BATCH, HEADS, HEAD_DIM, SEQ)
    cases.append(("matmul_batched_8x12x128x64x128",
                   shape_str(q.shape, kt.shape), lambda q=q, kt=kt: q @ kt))
    p, v = randn(BATCH, HEADS, SEQ, SEQ), randn(BATCH, HEADS, SEQ, HEAD_DIM)
    cases.append(("matmul_batched_8x12x128x128x64",
                   shape_str(p.shape, v.shape), lambda p=p, v=v: p @ v))

    # ---- softmax(x * scale + mask) over the last dim; backward gives d/dx (scale included) ----
    x = randn(BATCH, HEADS, SEQ, SEQ)
    mask = torch.zeros(BATCH, 1, 1, SEQ)
    mask[:, :, :, 100:] = -1e4  # padded keys, HF-style additive mask
    mask = mask.to(dev)
    sm_shape = shape_str(x.shape, mask.shape)
    y = torch.softmax(x * SCALE + mask, dim=-1)
    dy = randn(*y.shape)

    def softmax_bwd(y=y, dy=dy):
        return torch._softmax_backward_data(dy, y, -1, torch.float32) * SCALE

    check(softmax_bwd(), lambda t: torch.softmax(t * SCALE + mask, dim=-1), x, dy)
    cases.append(("softmax_fwd", sm_shape, lambda x=x, mask=mask: torch.softmax(x * SCALE + mask, dim=-1)))
    cases.append(("softmax_bwd", sm_shape, softmax_bwd))

    # ---- layer_norm over the last dim of [1024, 768] with weight and bias; backward: dx, dw, db
    x = randn(TOKENS, HIDDEN)
    w, b = randn(HIDDEN), randn(HIDDEN)
    ln_shape = shape_str(x.shape)
    _, mean, rstd = torch.native_layer_norm(x, [HIDDEN], w, b, LN_EPS)
    dy = randn(TOKENS, HIDDEN)

    def layer_norm_bwd(dy=dy, x=x, mean=mean, rstd=rstd, w=w, b=b):
        return torch.ops.aten.native_layer_norm_backward(
            dy, x, [HIDDEN], mean, rstd, w, b, [True, True, True])

    check(layer_norm_bwd(), lambda t, tw, tb: F.layer_norm(t, (HIDDEN,), tw, tb, LN_EPS),
          (x, w, b), dy)
    cases.append(("layer_norm_fwd", ln_shape,
                  lambda x=x, w=w, b=b: F.layer_norm(x, (HIDDEN,), w, b, LN_EPS)))
    cases.append(("layer_norm_bwd", ln_shape, layer_norm_bwd))

    # ---- exact (erf) GELU over [1024, 3072] ----
    x = randn(TOKENS, FFN)
    dy = randn(TOKENS, FFN)

    def gelu_bwd(dy=dy, x=x):
        return torch.ops.aten.gelu_backward(dy, x, approximate="none")

    check(gelu_bwd(), lambda t: F.gelu(t, approximate="none"), x, dy)
    cases.append(("gelu_fwd", shape_str(x.shape), lambda x=x: F.gelu(x, approximate="none")))
    cases.append(("gelu_bwd", shape_str(x.shape), gelu_bwd))

    # ---- cross_entropy (mean over targets != -100) over the vocabulary; backward: dlogits for
    # an upstream grad of 1 ----
    for rows in (MASKED, TOKENS):
        logits = randn(rows, VOCAB)
        target = torch.randint(0, VOCAB, (rows,), generator=g).to(dev)
        ce_shape = shape_str(logits.shape)
        one = torch.ones((), device=dev)

        # The two kernels autograd runs for F.cross_entropy's backward, given the
        # log-probabilities the forward saved (computed once here, outside the timing).
        logp = torch.log_softmax(logits, dim=-1)
        total = (target != IGNORE).sum().to(logits.dtype)

        def ce_bwd(logp=logp, target=target, one=one, total=total):
            dlogp = torch.ops.aten.nll_loss_backward(one, logp, target, None, 1, IGNORE, total)
            return torch._log_softmax_backward_data(dlogp, logp, 1, torch.float32)

        check(ce_bwd(), lambda t, target=target: F.cross_entropy(t, target, ignore_index=IGNORE),
              logits, one)
        cases.append((f"cross_entropy_fwd_{rows}", ce_shape,
                      lambda logits=logits, target=target:
                      F.cross_entropy(logits, target, ignore_index=IGNORE)))
        cases.append((f"cross_entropy_bwd_{rows}", ce_shape, ce_bwd))
    return cases


def check(got, f, inputs, dy):
    """Asserts that the explicit backward kernels equal autograd's gradients."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    got = got if isinstance(got, tuple) else (got,)
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    f(*leaves).backward(dy)
    for a, leaf in zip(got, leaves):
        torch.testing.assert_close(a, leaf.grad, rtol=1e-4, atol=1e-5)


def time_op(fn, sync, min_time):
    """Median milliseconds over enough repeats to fill min_time seconds (at least 5)."""
    for _ in range(3):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - t0, 1e-6)
    reps = max(5, min(10_000, math.ceil(min_time / once)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of timed repeats per op")
    ap.add_argument("--only", default="", help="comma-separated op names to run (default: all)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # plain f32, as the Rust side computes
    print(json.dumps({"torch": torch.__version__, "device": str(dev), "threads": args.threads,
                      "dtype": "float32"}), file=sys.stderr)

    only = {s for s in args.only.split(",") if s}
    cases = build_cases(dev)  # with autograd on: it checks the explicit backward kernels
    with torch.no_grad():
        known = {op for op, _, _ in cases}
        if only - known:
            sys.exit(f"unknown op(s): {sorted(only - known)}; known: {sorted(known)}")
        for op, shape, fn in cases:
            if only and op not in only:
                continue
            ms = time_op(fn, sync, args.min_time)
            print(json.dumps({"op": op, "shape": shape, "ms": round(ms, 4)}), flush=True)


if __name__ == "__main__":
    main()
