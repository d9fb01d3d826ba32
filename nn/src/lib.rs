//! `nn`: Module, layers, AdamW, schedules, safetensors checkpoints (issue: HF-compatible BERT).
