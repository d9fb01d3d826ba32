"""The PyTorch twin of bench/src/bin/linear_gemm.rs: F.linear(x, w, b) for the three shapes of a
BERT-base layer, 12 cycled weights, median ms per product, JSON lines like the Rust side.

The bf16 training rows are what a step under torch.autocast("cpu", bfloat16) runs per layer:
linear_bf16_train_fwd_* = F.linear on f32 x and weights under autocast with the weights
requiring grad (autocast casts x each call; the weight casts are cached inside one autocast
region as in a forward pass), linear_bf16_dx_* = g @ w and linear_bf16_dw_* = g^T @ x on the
bf16 tensors autograd saved (the f32 accumulation of dW, a separate cast, is not included;
ours rounds its f32 operands inside the timed call)."""
import argparse
import json
import statistics
import time

import torch

ROWS, LAYERS = 1024, 12


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for fan_in, fan_out in [(768, 768), (768, 3072), (3072, 768)]:
        x = torch.randn(ROWS, fan_in)
        weights = [(torch.randn(fan_out, fan_in) * 0.02, torch.randn(fan_out) * 0.02)
                   for _ in range(LAYERS)]

        # f32, then under bf16 autocast (rows linear_bf16_*, as the Rust side's).
        for bf16, prefix in [(False, "linear"), (True, "linear_bf16")]:
            def run():
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    for w, b in weights:
                        torch.nn.functional.linear(x, w, b)

            print(json.dumps({"op": f"{prefix}_{fan_in}x{fan_out}",
                              "shape": f"[{ROWS},{fan_in}]x[{fan_in},{fan_out}]",
                              "ms": median_ms(run)}))
        training_rows(fan_in, fan_out, x, weights)


def median_ms(run):
    """Median ms of one call of run() divided by LAYERS, after 3 warm-up calls, over >= 2 s."""
    for _ in range(3):
        run()
    samples, start = [], time.perf_counter()
    while len(samples) < 5 or time.perf_counter() - start < 2.0:
        t = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t) * 1e3 / LAYERS)
    return statistics.median(samples)


def training_rows(fan_in, fan_out, x, weights):
    """The three bf16 products of one linear layer in a training step (module doc)."""
    params = [(w.clone().requires_grad_(), b.clone().requires_grad_()) for w, b in weights]
    g16 = torch.randn(ROWS, fan_out).bfloat16()
    x16 = x.bfloat16()
    w16 = [w.bfloat16() for w, _ in weights]

    def train_fwd():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for w, b in params:
                torch.nn.functional.linear(x, w, b)

    def dx():
        for w in w16:
            torch.mm(g16, w)

    def dw():
        for _ in w16:
            torch.mm(g16.t(), x16)

    for what, shape, run in [
        ("train_fwd", f"[{ROWS},{fan_in}]x[{fan_in},{fan_out}]", train_fwd),
        ("dx", f"[{ROWS},{fan_out}]x[{fan_out},{fan_in}]", dx),
        ("dw", f"[{fan_in},{ROWS}]x[{ROWS},{fan_out}]", dw),
    ]:
        print(json.dumps({"op": f"linear_bf16_{what}_{fan_in}x{fan_out}", "shape": shape,
                          "ms": median_ms(run)}))


if __name__ == "__main__":
    main()
