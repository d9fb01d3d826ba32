#!/usr/bin/env python3
"""Reference loss and gradients of Tevatron's DenseModel, computed with HF transformers + PyTorch.

Writes tests/fixtures/dense_parity.safetensors (relative to the repository root), read by
retrieval/tests/dense_parity.rs.

The model is a tiny random `BertModel` with its pooler, as `AutoModel.from_pretrained` builds it
(2 layers, hidden 64, 4 heads, intermediate 128, vocab 128, 64 positions, dropout 0, HF's
"eager" attention). HF's init is widened (initializer_range 0.1) and the biases and LayerNorm
parameters are perturbed, so that [CLS] vectors differ between texts and every gradient path is
non-trivial.

The batch is what Tevatron's TrainDataset + QPCollator produce for Q = 3 queries with
train_n_passages n = 4 passages each (the positive first), q_max_len 8, p_max_len 16: each text is
`[CLS] + ids[:max_len - 2] + [SEP]` (transformers 4.x `encode_plus(ids, truncation='only_first',
max_length=max_len)`, which transformers 5 no longer offers for id lists, so it is written out
below), then `tokenizer.pad(padding='max_length', max_length=max_len)`. Some texts are longer
than max_len - 2 (truncated), some short (padded).

The loss is Tevatron's DenseModel.forward in training mode, world size 1:

    q_reps = model(**query).last_hidden_state[:, 0]          # [Q, H], no pooler, no normalisation
    p_reps = model(**passage).last_hidden_state[:, 0]        # [Q * n, H]
    scores = q_reps @ p_reps.T                               # [Q, Q * n]
    target = arange(Q) * (Q * n // Q)                        # the positive of query i is row i * n
    loss = cross_entropy(scores, target)                     # mean over queries

It is evaluated in float64 on the float32 weights (so the reference carries no f32 rounding), and
stored as float32 except the loss (float64).

Tensor names:
  param.<p>                  every parameter of the BertModel (HF names, pooler included), f32
  q_input_ids, q_attention_mask   [Q, q_max_len] i64
  p_input_ids, p_attention_mask   [Q * n, p_max_len] i64
  q_reps [Q, H], p_reps [Q * n, H], scores [Q, Q * n]
  loss                       [] f64
  grad.<p>                   d loss / d <p> for every parameter that gets a gradient (the pooler
                             is unused by the loss and gets none, as in Tevatron)
Metadata: config (config.json text), n_passages, q_max_len, p_max_len, queries and passages (JSON
lists of the raw token-id lists, before special tokens and truncation), cls_id, sep_id, pad_id,
versions, command.

Run from anywhere:  python3 scripts/gen_dense_fixtures.py
Needs torch, transformers (5.x) and safetensors.
"""

import json
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "dense_parity.safetensors")
COMMAND = "python3 scripts/gen_dense_fixtures.py"

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    type_vocab_size=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.1,
    pad_token_id=0,
)
PAD, CLS, SEP = 0, 2, 3
FIRST_WORD = 5  # ids 0..4 are [PAD] [UNK] [CLS] [SEP] [MASK]
Q, N_PASSAGES = 3, 4
Q_MAX_LEN, P_MAX_LEN = 8, 16


def texts(g, lengths):
    return [torch.randint(FIRST_WORD, TINY["vocab_size"], (n,), generator=g).tolist() for n in lengths]


def encode(ids, max_len):
    """encode_plus(ids, truncation='only_first', max_length=max_len), no padding."""
    return [CLS] + ids[: max_len - 2] + [SEP]


def collate(items, max_len):
    """tokenizer.pad(items, padding='max_length', max_length=max_len): ids and attention mask."""
    ids = torch.full((len(items), max_len), PAD, dtype=torch.long)
    mask = torch.zeros((len(items), max_len), dtype=torch.long)
    for i, t in enumerate(items):
        ids[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = 1
    return ids, mask


def perturb(model, g):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def main():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2022)
    config = BertConfig(**TINY)
    model = BertModel._from_config(config, add_pooling_layer=True, attn_implementation="eager")
    perturb(model, g)
    params32 = {n: p.detach().clone() for n, p in model.named_parameters()}

    # Query lengths: one truncated (10 > 6), one exact fit, one short. Passages: a mix.
    queries = texts(g, [10, 6, 2])
    passages = texts(g, [14, 3, 20, 7, 1, 14, 9, 5, 30, 12, 4, 8])
    q_ids, q_mask = collate([encode(t, Q_MAX_LEN) for t in queries], Q_MAX_LEN)
    p_ids, p_mask = collate([encode(t, P_MAX_LEN) for t in passages], P_MAX_LEN)

    model.double()
    model.train()  # dropout 0: train mode is deterministic
    q_reps = model(input_ids=q_ids, attention_mask=q_mask).last_hidden_state[:, 0]
    p_reps = model(input_ids=p_ids, attention_mask=p_mask).last_hidden_state[:, 0]
    scores = q_reps @ p_reps.T
    scores = scores.view(q_reps.size(0), -1)
    target = torch.arange(scores.size(0), dtype=torch.long) * (p_reps.size(0) // q_reps.size(0))
    loss = torch.nn.functional.cross_entropy(scores, target)
    loss.backward()

    out = {f"param.{n}": t for n, t in params32.items()}
    out.update(
        q_input_ids=q_ids,
        q_attention_mask=q_mask,
        p_input_ids=p_ids,
        p_attention_mask=p_mask,
        q_reps=q_reps.detach().float(),
        p_reps=p_reps.detach().float(),
        scores=scores.detach().float(),
        loss=loss.detach().clone(),
    )
    for n, p in model.named_parameters():
        if p.grad is not None:
            out[f"grad.{n}"] = p.grad.detach().float()
    out = {k: v.contiguous() for k, v in out.items()}
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == ["pooler.dense.weight", "pooler.dense.bias"], no_grad

    meta = {
        "config": json.dumps(TINY, sort_keys=True),
        "n_passages": str(N_PASSAGES),
        "q_max_len": str(Q_MAX_LEN),
        "p_max_len": str(P_MAX_LEN),
        "queries": json.dumps(queries),
        "passages": json.dumps(passages),
        "cls_id": str(CLS),
        "sep_id": str(SEP),
        "pad_id": str(PAD),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": COMMAND,
    }
    save_file(out, OUT, metadata=meta)
    probs = torch.softmax(scores.detach(), -1)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")
    print(f"loss {loss.item():.6f}; score range {scores.min().item():.3f}..{scores.max().item():.3f}")
    print(f"probability of the positive: {probs[torch.arange(Q), target].tolist()}")


if __name__ == "__main__":
    main()
