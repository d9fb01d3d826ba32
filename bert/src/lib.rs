//! `bert`: BertConfig, WordPiece tokenizer, BertModel and BertForMaskedLM (issue: HF-compatible BERT).
