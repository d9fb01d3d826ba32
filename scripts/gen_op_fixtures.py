#!/usr/bin/env python3
"""Reference fixtures for the tensor crate's op tests, computed with PyTorch (float32, CPU).

Writes, relative to the repository root:
  tests/fixtures/ops.safetensors       inputs and outputs of softmax / log_softmax (with scale
                                       and additive mask), layer_norm, cross_entropy, batched
                                       matmul with transposed operands, and exact GELU, forward
                                       and backward.
  tests/fixtures/py_small.safetensors  a tiny file written by the Python safetensors library,
                                       used to check that our reader handles its byte layout.

Run from anywhere:  python3 scripts/gen_op_fixtures.py
Needs torch and safetensors. Tensor names are "<op>.<role>"; see each section below.
"""

import json
import os
import struct
import sys

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures")
COMMAND = "python3 scripts/gen_op_fixtures.py"


def grad_of(f, *inputs):
    """Runs f on leaf copies of inputs that require grad; returns (output, leaves)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    return f(*leaves), leaves


def softmax_fixtures(out):
    # HF-style attention scores: x * scale + mask, mask 0 or -1e4, broadcast over heads and rows.
    x = torch.randn(2, 3, 5, 7)
    mask = torch.zeros(2, 1, 1, 7)
    mask[0, 0, 0, 5:] = -1e4
    mask[1, 0, 0, 2:] = -1e4
    scale = torch.tensor([0.125 * 3.0])  # a non-power-of-two scale
    for name, fn in (("softmax", torch.softmax), ("log_softmax", torch.log_softmax)):
        y, (xl,) = grad_of(lambda a: fn(a * scale + mask, dim=-1), x)
        dy = torch.randn_like(y)
        y.backward(dy)
        out.update({
            f"{name}.x": x,
            f"{name}.mask": mask,
            f"{name}.scale": scale,
            f"{name}.y": y.detach(),
            f"{name}.dy": dy,
            f"{name}.dx": xl.grad,
        })


def layer_norm_fixtures(out):
    x = torch.randn(6, 16) * 3.0 + 1.0
    w = torch.randn(16)
    b = torch.randn(16)
    eps = 1e-12
    y, (xl, wl, bl) = grad_of(lambda a, g, c: torch.nn.functional.layer_norm(a, (16,), g, c, eps), x, w, b)
    dy = torch.randn_like(y)
    y.backward(dy)
    out.update({
        "layer_norm.x": x,
        "layer_norm.weight": w,
        "layer_norm.bias": b,
        "layer_norm.eps": torch.tensor([eps], dtype=torch.float64),
        "layer_norm.y": y.detach(),
        "layer_norm.dy": dy,
        "layer_norm.dx": xl.grad,
        "layer_norm.dweight": wl.grad,
        "layer_norm.dbias": bl.grad,
    })


def cross_entropy_fixtures(out):
    logits = torch.randn(10, 37) * 2.0
    target = torch.randint(0, 37, (10,), dtype=torch.int64)
    target[[1, 4, 8]] = -100
    loss, (ll,) = grad_of(
        lambda z: torch.nn.functional.cross_entropy(z, target, ignore_index=-100), logits)
    loss.backward(torch.ones_like(loss))
    out.update({
        "cross_entropy.logits": logits,
        "cross_entropy.target": target,
        "cross_entropy.loss": loss.detach().reshape(()),
        "cross_entropy.dlogits": ll.grad,
    })


def matmul_fixtures(out):
    # a @ b^T with b stored [.., n, k] (a transposed view on the right).
    a = torch.randn(2, 3, 4, 5)
    b = torch.randn(2, 3, 6, 5)
    out.update({"matmul_bt.a": a, "matmul_bt.b": b, "matmul_bt.y": a @ b.transpose(-1, -2)})
    # a^T @ c with a stored [.., k, m] (a transposed view on the left).
    a = torch.randn(2, 3, 5, 4)
    c = torch.randn(2, 3, 5, 6)
    out.update({"matmul_at.a": a, "matmul_at.b": c, "matmul_at.y": a.transpose(-1, -2) @ c})
    # A batched lhs times a 2-D rhs (the rhs broadcast over the batch).
    a = torch.randn(3, 4, 5)
    b = torch.randn(5, 6)
    out.update({"matmul_bcast.a": a, "matmul_bcast.b": b, "matmul_bcast.y": a @ b})


def gelu_fixtures(out):
    x = torch.linspace(-8.0, 8.0, 1000)
    y, (xl,) = grad_of(lambda a: torch.nn.functional.gelu(a, approximate="none"), x)
    dy = torch.randn_like(y)
    y.backward(dy)
    out.update({"gelu.x": x, "gelu.y": y.detach(), "gelu.dy": dy, "gelu.dx": xl.grad})


def py_small(path):
    """Known values, checked exactly by tensor/src/safetensors.rs tests."""
    tensors = {
        "f32": torch.tensor([[0.0, 1.5, -2.25], [3.0e-8, 1.0e30, -7.0]], dtype=torch.float32),
        "f16": torch.tensor([1.0, -0.5, 65504.0, 0.0], dtype=torch.float16),
        "bf16": torch.tensor([[1.0, -2.0], [0.15625, 258.0]], dtype=torch.bfloat16),
        "i64": torch.tensor([-100, 0, 1, 30521, 2**63 - 1], dtype=torch.int64),
        "scalar": torch.tensor(3.5, dtype=torch.float32),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
    }
    save_file(tensors, path, metadata={"format": "pt"})


def sort_metadata(path):
    """Rewrites the header with __metadata__ keys sorted, so regenerating gives identical bytes
    (the library writes them in hash order). Same keys and values, so the length is unchanged."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        assert len(text) <= n, "header grew"
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic reduction order
    out = {}
    softmax_fixtures(out)
    layer_norm_fixtures(out)
    cross_entropy_fixtures(out)
    matmul_fixtures(out)
    gelu_fixtures(out)
    out = {k: v.detach().clone().contiguous() for k, v in out.items()}
    os.makedirs(OUT_DIR, exist_ok=True)
    meta = {
        "generator": COMMAND,
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "dtype": "float32 (cross_entropy.target int64, layer_norm.eps float64)",
        "seed": "torch.manual_seed(0)",
    }
    ops_path = os.path.join(OUT_DIR, "ops.safetensors")
    save_file(out, ops_path, metadata=meta)
    sort_metadata(ops_path)
    small_path = os.path.join(OUT_DIR, "py_small.safetensors")
    py_small(small_path)
    for p in (ops_path, small_path):
        print(f"wrote {os.path.relpath(p, ROOT)} ({os.path.getsize(p)} bytes)")


if __name__ == "__main__":
    main()
