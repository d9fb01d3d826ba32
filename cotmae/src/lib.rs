//! `cotmae`: span preparation, whole-word-mask collator, BertForCotMAE and the pretraining trainer.
