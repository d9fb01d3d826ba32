#!/usr/bin/env python3
"""Reference losses and gradients of BertForCotMAE (REFERENCE.md §3), computed with PyTorch and HF
transformers (f32, CPU), for cotmae/tests/model_parity.rs.

usage: python3 scripts/gen_cotmae_fixtures.py     writes tests/fixtures/cotmae_parity.safetensors

The torch model is `CotMae` below: a transformers `BertForMaskedLM` (`lm`) and an `nn.ModuleList`
of transformers `BertLayer`s (`c_head`), wired as the original caskcsg/ir `BertForCotMAE`:

    encoder: lm(input_ids, attention_mask, labels) -> encoder loss, last hidden state h
    decoder: e = lm.bert.embeddings(decoder_input_ids); x = cat(h[:, :1], e[:, 1:], dim=1)
             x = c_head[k](x, additive mask of decoder_attention_mask) for each k
             head loss = mean cross-entropy of lm.cls(x) against decoder_labels (ignore -100)
    loss = encoder loss + head_mlm_coef * head loss

Parameters are stored under the original's names (`bert.*`, `cls.*`, `c_head.<i>.*`: it subclasses
BertForMaskedLM), which are ours too. The additive mask is
(1 - mask) * finfo(float32).min, what transformers 5 uses for its eager attention (4.17 used
-10000; both give exactly 0 after the softmax in f32).

The config is tiny (2 encoder layers, hidden 64, 4 heads, FFN 80, 56-token vocabulary, dropout 0,
"eager" attention) so that weights plus gradients stay under 1 MB; dropout 0 makes train mode
deterministic. Weights are HF's initialisation with initializer_range 0.2 (at 0.02 the tiny
model's outputs barely depend on its inputs: dropping the [CLS] substitution changes the decoder
loss by 3e-6 relative, at 0.2 by 2e-2) with random perturbations of every bias and LayerNorm
parameter, so every gradient path is exercised.

The batch is B = 3 documents = 6 rows of L = 12, laid out [anchor_0, ctx_0, anchor_1, ...] like
the collator's: row r of the encoder holds text r, row r of the decoder holds text r ^ 1 (its
partner), texts are [CLS] words [SEP] then padding (several rows padded), about 30% of the
encoder's and 45% of the decoder's words are labelled (replaced by [MASK], or by a random word).

Tensors written:
  <param>                 every parameter under our names (the tied MLM decoder is the word
                          embedding table, stored once)
  input_ids, attention_mask, labels,
  decoder_input_ids, decoder_attention_mask, decoder_labels      [2B, L] i64
  encoder_mlm_loss, head_mlm_loss, loss                            [] f32 (head loss unweighted)
  grad.<param>            d loss / d param (the word embeddings: the single accumulated gradient
                          of the encoder lookup, the decoder lookup and both MLM projections)
Metadata: command, versions, head_mlm_coef, params (JSON list in our order).
"""

import json
import os

import torch
import transformers
from safetensors.torch import save_file
from torch import nn
from transformers import BertConfig, BertForMaskedLM
from transformers.models.bert.modeling_bert import BertLayer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "cotmae_parity.safetensors")
COMMAND = "python3 scripts/gen_cotmae_fixtures.py"

TINY = dict(
    vocab_size=56,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=80,
    max_position_embeddings=16,
    type_vocab_size=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    pad_token_id=0,
    initializer_range=0.2,
)
N_HEAD_LAYERS = 2
HEAD_MLM_COEF = 0.7
PAD, CLS, SEP, MASK, FIRST_WORD = 0, 2, 3, 4, 5
SEQ = 12
# Real lengths (with [CLS] and [SEP]) of texts anchor_0, ctx_0, anchor_1, ctx_1, anchor_2, ctx_2.
LENGTHS = [12, 9, 7, 12, 5, 10]


class CotMae(nn.Module):
    """The original's BertForCotMAE as a BertForMaskedLM plus a ModuleList of BertLayers (also
    timed by bench/cotmae_torch.py)."""

    def __init__(self, config, n_head_layers, head_mlm_coef, attn_implementation="eager"):
        super().__init__()
        self.lm = BertForMaskedLM._from_config(config, attn_implementation=attn_implementation)
        self.c_head = nn.ModuleList([BertLayer(self.lm.config) for _ in range(n_head_layers)])
        self.c_head.apply(self.lm._init_weights)
        self.head_mlm_coef = head_mlm_coef

    def forward(self, b):
        out = self.lm(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            labels=b["labels"],
            output_hidden_states=True,
        )
        cls_hiddens = out.hidden_states[-1][:, 0]
        emb = self.lm.bert.embeddings(input_ids=b["decoder_input_ids"])
        mask = b["decoder_attention_mask"][:, None, None, :].to(torch.float32)
        mask = (1.0 - mask) * torch.finfo(torch.float32).min
        x = torch.cat([cls_hiddens.unsqueeze(1), emb[:, 1:]], dim=1)
        for layer in self.c_head:
            x = layer(x, mask)
        logits = self.lm.cls(x)
        head = nn.functional.cross_entropy(
            logits.view(-1, self.lm.config.vocab_size), b["decoder_labels"].view(-1),
            ignore_index=-100,
        )
        return out.loss, head, out.loss + self.head_mlm_coef * head


def perturb(model, g):
    """Random biases and LayerNorm parameters (HF's init makes them 0 and 1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def mask_rows(texts, ratio, g):
    """Each text padded to SEQ; about `ratio` of its words labelled (at least one), 80% of those
    replaced by [MASK], 10% by a random word, 10% kept."""
    ids = torch.full((len(texts), SEQ), PAD, dtype=torch.long)
    att = torch.zeros(len(texts), SEQ, dtype=torch.long)
    labels = torch.full((len(texts), SEQ), -100, dtype=torch.long)
    for r, t in enumerate(texts):
        n = len(t)
        ids[r, :n] = t
        att[r, :n] = 1
        words = list(range(1, n - 1))
        k = max(1, round(len(words) * ratio))
        for i in torch.randperm(len(words), generator=g)[:k].tolist():
            pos = words[i]
            labels[r, pos] = t[pos]
            u = torch.rand((), generator=g).item()
            if u < 0.8:
                ids[r, pos] = MASK
            elif u < 0.9:
                ids[r, pos] = torch.randint(FIRST_WORD, TINY["vocab_size"], (), generator=g)
    return ids, att, labels


def make_batch(g):
    texts = []
    for n in LENGTHS:
        t = torch.randint(FIRST_WORD, TINY["vocab_size"], (n,), generator=g)
        t[0], t[n - 1] = CLS, SEP
        texts.append(t)
    ids, att, labels = mask_rows(texts, 0.30, g)
    partner = [texts[r ^ 1] for r in range(len(texts))]
    d_ids, d_att, d_labels = mask_rows(partner, 0.45, g)
    return {
        "input_ids": ids,
        "attention_mask": att,
        "labels": labels,
        "decoder_input_ids": d_ids,
        "decoder_attention_mask": d_att,
        "decoder_labels": d_labels,
    }


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2024)
    model = CotMae(BertConfig(**TINY), N_HEAD_LAYERS, HEAD_MLM_COEF)
    perturb(model, g)
    model.train()
    batch = make_batch(g)

    enc, head, loss = model(batch)
    loss.backward()

    # named_parameters lists the tied decoder weight once, under the word embeddings' name.
    # Stored under the original's names: it subclasses BertForMaskedLM, so no `lm.` prefix.
    params = {n.removeprefix("lm."): p for n, p in model.named_parameters()}
    out = dict(batch)
    for n, p in params.items():
        out[n] = p.detach().clone()
        out[f"grad.{n}"] = p.grad.detach().clone()
    out["encoder_mlm_loss"] = enc.detach().clone()
    out["head_mlm_loss"] = head.detach().clone()
    out["loss"] = loss.detach().clone()
    meta = {
        "command": COMMAND,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "head_mlm_coef": str(HEAD_MLM_COEF),
        "n_head_layers": str(N_HEAD_LAYERS),
        "config": json.dumps(TINY),
        "params": json.dumps(list(params)),
    }
    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, OUT, metadata=meta)
    print(
        f"{len(params)} parameters; encoder loss {enc.item():.6f}, head loss {head.item():.6f}, "
        f"loss {loss.item():.6f}; labelled: encoder {(batch['labels'] != -100).sum().item()}, "
        f"decoder {(batch['decoder_labels'] != -100).sum().item()}; "
        f"{os.path.getsize(OUT) / 1024:.0f} KB -> {os.path.relpath(OUT, ROOT)}"
    )


if __name__ == "__main__":
    main()
