#!/usr/bin/env python3
"""Reference trajectories for the nn crate's optimisation pieces, computed with PyTorch (float32, CPU).

Writes tests/fixtures/optim.safetensors (relative to the repository root): a few parameters of
different shapes, fixed raw gradients for each step, and, for two configurations and both AdamW
variants, the parameters after every step of the HF training loop

    grad_norm = clip_grad_norm_(params, max_grad_norm)   # before each step
    optimizer.step()                                     # lr = scheduler's current lr
    scheduler.step()                                     # get_linear_schedule_with_warmup

with two parameter groups as the HF Trainer builds them (weight decay on every parameter except
biases and LayerNorm weights).

Variants:
  torch  torch.optim.AdamW (decay p *= 1 - lr*wd first, bias-corrected denominator).
  hf     transformers.AdamW of transformers 4.17, the HF Trainer's default optimizer ("adamw_hf") at
         the version the reference pipeline used. Recent transformers no longer ship it, so its
         update is re-implemented below (HfAdamW), line for line.

Configurations:
  a  the brief's small case: base lr 1e-3, weight decay 0.01, 1 warmup step of 4, 3 steps.
  b  large lr and weight decay, plus a parameter with tiny gradients, so that the two variants'
     different placement of eps and of the weight decay shows far above f32 rounding:
     base lr 0.1, weight decay 0.1, warmup ceil(0.3 * 5) = 2 of 5 steps, 4 steps.

Tensor names:
  param.<p>              initial value of parameter <p>
  grad.<k>.<p>           raw gradient of <p> at step k (1-based), before clipping
  <c>.lr                 [steps] f64: the lr each step used (the scheduler's lr before the step)
  <c>.grad_norm          [steps] f64: what clip_grad_norm_ returned at each step
  <c>.<v>.<k>.<p>        parameter <p> after step k of configuration <c>, variant <v>
Metadata: per configuration <c>.base_lr, <c>.weight_decay, <c>.total_steps, <c>.warmup_ratio,
<c>.warmup_steps, <c>.steps; max_grad_norm, betas, eps, the parameter names, versions, command.

Run from anywhere:  python3 scripts/gen_optim_fixtures.py
Needs torch, transformers (for get_linear_schedule_with_warmup) and safetensors.
"""

import math
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import get_linear_schedule_with_warmup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "optim.safetensors")
COMMAND = "python3 scripts/gen_optim_fixtures.py"

BETAS = (0.9, 0.999)
EPS = 1e-8
MAX_GRAD_NORM = 1.0
NO_DECAY = ["bias", "LayerNorm.weight"]

# name -> (shape, gradient scale). "encoder.tiny.weight" gets gradients of order 1e-8, where eps
# dominates the Adam denominator and the two variants differ most.
PARAMS = {
    "encoder.dense.weight": ((4, 3), 1.0),
    "encoder.dense.bias": ((4,), 1.0),
    "encoder.LayerNorm.weight": ((4,), 1.0),
    "cls.decoder.weight": ((2, 5), 1.0),
    "encoder.tiny.weight": ((3,), 1e-8),
}
# Per-step multiplier of every gradient: step 2 stays under max_grad_norm (no clipping), the
# others are clipped.
STEP_SCALE = [1.0, 0.05, 2.0, 0.7]

CONFIGS = {
    "a": dict(base_lr=1e-3, weight_decay=0.01, total_steps=4, warmup_ratio=0.25, steps=3),
    "b": dict(base_lr=0.1, weight_decay=0.1, total_steps=5, warmup_ratio=0.3, steps=4),
}


class HfAdamW(torch.optim.Optimizer):
    """transformers 4.17 `transformers.AdamW` (correct_bias=True), re-implemented: m and v
    updated, denom = sqrt(v) + eps, step size lr * sqrt(1 - b2^t) / (1 - b1^t), and the decoupled
    weight decay p -= lr * wd * p applied AFTER the Adam update (to the updated p)."""

    def __init__(self, params, lr, betas, eps, weight_decay):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                beta1, beta2 = group["betas"]
                state["step"] += 1
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                bias_correction1 = 1.0 - beta1 ** state["step"]
                bias_correction2 = 1.0 - beta2 ** state["step"]
                step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
                p.addcdiv_(exp_avg, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def initial_params():
    g = torch.Generator().manual_seed(1234)
    return {n: torch.randn(s, generator=g) for n, (s, _) in PARAMS.items()}


def raw_grads(steps):
    g = torch.Generator().manual_seed(5678)
    out = []
    for k in range(steps):
        out.append({
            n: torch.randn(s, generator=g) * scale * STEP_SCALE[k] for n, (s, scale) in PARAMS.items()
        })
    return out


def run(variant, cfg, init, grads):
    """Returns (lrs, grad norms, params after each step) for one variant and configuration."""
    params = {n: torch.nn.Parameter(t.clone()) for n, t in init.items()}
    decay = [p for n, p in params.items() if not any(nd in n for nd in NO_DECAY)]
    no_decay = [p for n, p in params.items() if any(nd in n for nd in NO_DECAY)]
    groups = [
        {"params": decay, "weight_decay": cfg["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if variant == "torch":
        opt = torch.optim.AdamW(groups, lr=cfg["base_lr"], betas=BETAS, eps=EPS, foreach=False)
    else:
        opt = HfAdamW(groups, lr=cfg["base_lr"], betas=BETAS, eps=EPS, weight_decay=0.0)
    # TrainingArguments.get_warmup_steps (4.17): ceil(num_training_steps * warmup_ratio).
    warmup = math.ceil(cfg["total_steps"] * cfg["warmup_ratio"])
    sched = get_linear_schedule_with_warmup(opt, warmup, cfg["total_steps"])
    lrs, norms, after = [], [], []
    for k in range(cfg["steps"]):
        for n, p in params.items():
            p.grad = grads[k][n].clone()
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_GRAD_NORM)
        lrs.append(opt.param_groups[0]["lr"])
        norms.append(float(norm))
        opt.step()
        sched.step()
        after.append({n: p.detach().clone() for n, p in params.items()})
    return warmup, lrs, norms, after


def main():
    torch.manual_seed(0)
    init = initial_params()
    max_steps = max(c["steps"] for c in CONFIGS.values())
    grads = raw_grads(max_steps)
    out = {f"param.{n}": t for n, t in init.items()}
    for k in range(max_steps):
        out.update({f"grad.{k + 1}.{n}": t for n, t in grads[k].items()})
    meta = {
        "command": COMMAND,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "max_grad_norm": repr(MAX_GRAD_NORM),
        "beta1": repr(BETAS[0]),
        "beta2": repr(BETAS[1]),
        "eps": repr(EPS),
        "params": ",".join(PARAMS),
        "no_decay": ",".join(NO_DECAY),
    }
    for c, cfg in CONFIGS.items():
        for key, val in cfg.items():
            meta[f"{c}.{key}"] = repr(val)
        results = {}
        for variant in ("torch", "hf"):
            warmup, lrs, norms, after = run(variant, cfg, init, grads)
            results[variant] = (lrs, norms)
            for k, ps in enumerate(after):
                out.update({f"{c}.{variant}.{k + 1}.{n}": t for n, t in ps.items()})
        # Gradients do not depend on the parameters, so both variants see the same lr and norms.
        assert results["torch"] == results["hf"]
        lrs, norms = results["torch"]
        meta[f"{c}.warmup_steps"] = str(warmup)
        out[f"{c}.lr"] = torch.tensor(lrs, dtype=torch.float64)
        out[f"{c}.grad_norm"] = torch.tensor(norms, dtype=torch.float64)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, OUT, metadata=meta)
    print(f"wrote {OUT}: {len(out)} tensors, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
