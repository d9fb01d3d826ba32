//! `retrieval`: Tevatron-style dense retrieval: training, encoding, exact search, evaluation.
