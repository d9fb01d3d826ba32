"""The PyTorch twin of bench/src/bin/linear_gemm.rs: F.linear(x, w, b) for the three shapes of a
BERT-base layer, 12 cycled weights, median ms per product, JSON lines like the Rust side."""
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

            for _ in range(3):
                run()
            samples, start = [], time.perf_counter()
            while len(samples) < 5 or time.perf_counter() - start < 2.0:
                t = time.perf_counter()
                run()
                samples.append((time.perf_counter() - t) * 1e3 / LAYERS)
            print(json.dumps({"op": f"{prefix}_{fan_in}x{fan_out}",
                              "shape": f"[{ROWS},{fan_in}]x[{fan_in},{fan_out}]",
                              "ms": statistics.median(samples)}))


if __name__ == "__main__":
    main()
