#!/usr/bin/env python3
"""Builds a small real-text retrieval task from the Python standard library's docstrings,
for `cotmae ablation` (text none of us wrote, present on any machine with Python).

Every function, method or class docstring with a one-line summary and a body becomes a query
(the summary) and its one relevant passage (the body). Modules become pretraining documents
(all docstrings of a module, one document a line). Only `ast` is used: nothing is imported.

Writes into OUT: docs.txt, corpus.tsv (pid \\t text), queries.{train,dev}.tsv (qid \\t text),
qrels.{train,dev}.tsv (qid 0 pid 1), vocab/vocab.txt (a small WordPiece vocabulary: the most
frequent words, then single characters and ##characters) and config.json (a 2-layer, 64-wide
BERT). Deterministic for a seed.

usage: python3 scripts/stdlib_docstrings.py OUT [--n_train 1000] [--n_dev 476] [--seed 0]
"""

import argparse
import ast
import collections
import inspect
import json
import os
import random
import re
import sysconfig

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def words(text):
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


def clean(text):
    return " ".join(text.split())


def docstrings(path):
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None, []
    module_doc = ast.get_docstring(tree) or ""
    items = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc:
                items.append(inspect.cleandoc(doc))
    return module_doc, items


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n_train", type=int, default=1000)
    ap.add_argument("--n_dev", type=int, default=476)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab_words", type=int, default=4000)
    a = ap.parse_args()

    root = sysconfig.get_paths()["stdlib"]
    pairs, documents = {}, []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            module_doc, items = docstrings(os.path.join(dirpath, name))
            if module_doc is None:
                continue
            doc_parts = [clean(module_doc)] if module_doc else []
            for doc in items:
                summary, _, body = doc.partition("\n")
                summary, body = clean(summary), clean(body)
                doc_parts.append(clean(doc))
                if len(summary.split()) >= 4 and len(body.split()) >= 15:
                    body = " ".join(body.split()[:100])
                    pairs.setdefault(summary, body)  # first of repeated summaries
            text = " ".join(p for p in doc_parts if p)
            if len(text.split()) >= 30:
                documents.append(text)

    rng = random.Random(a.seed)
    summaries = sorted(pairs)
    rng.shuffle(summaries)
    chosen = summaries[: a.n_train + a.n_dev]
    if len(chosen) < a.n_train + a.n_dev:
        raise SystemExit(f"only {len(chosen)} docstring pairs found")
    os.makedirs(os.path.join(a.out, "vocab"), exist_ok=True)

    def write(name, lines):
        with open(os.path.join(a.out, name), "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")

    write("corpus.tsv", (f"p{i}\t{pairs[s]}" for i, s in enumerate(chosen)))
    for split, lo, hi in [("train", 0, a.n_train), ("dev", a.n_train, len(chosen))]:
        write(f"queries.{split}.tsv", (f"q{i}\t{chosen[i]}" for i in range(lo, hi)))
        write(f"qrels.{split}.tsv", (f"q{i}\t0\tp{i}\t1" for i in range(lo, hi)))
    write("docs.txt", documents)

    counts = collections.Counter()
    for text in documents + [pairs[s] + " " + s for s in chosen]:
        counts.update(words(text))
    chars = sorted({c for w in counts for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += chars + ["##" + c for c in chars if c.isalnum()]
    seen = set(vocab)
    for w, _ in counts.most_common():
        if len(vocab) >= a.vocab_words + 5 + 2 * len(chars):
            break
        if w not in seen and len(w) > 1:
            vocab.append(w)
            seen.add(w)
    write("vocab/vocab.txt", vocab)
    with open(os.path.join(a.out, "vocab", "tokenizer_config.json"), "w") as f:
        f.write('{"do_lower_case": true}\n')
    config = {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 256,
        "max_position_embeddings": 128,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(
        f"{len(documents)} documents, {len(chosen)} passages "
        f"({a.n_train} train / {len(chosen) - a.n_train} dev queries), vocab {len(vocab)}"
    )


if __name__ == "__main__":
    main()
