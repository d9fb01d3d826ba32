//! The demo's retrieval task, generated from the synthetic corpus ([`crate::synthetic`]).
//!
//! Each document is about one made-up person. Passages are runs of [`SENTENCES_PER_PASSAGE`]
//! consecutive sentences of a document (`pid` = `<docid>-<i>`). A query asks for one attribute of
//! a person *without naming them*, identifying them by their home town instead ("which animal
//! does the person from Kavaleton love"). Its relevant passages are those of that person's
//! document that state the attribute; most of them name the person but not the town, which only
//! other sentences of the same document state. So a retriever can answer only if its passage
//! vectors carry what the surrounding document says about the person: exactly what CoT-MAE's
//! decoder asks of the encoder's [CLS] (reconstruct a neighbouring span from it), and what plain
//! MLM pretraining does not ask for. Whether that shows is measured, not assumed: the demo
//! prints whatever the three pretrainings give.
//!
//! People are split: queries about the first `train_fraction` of the documents train the
//! retriever, queries about the rest evaluate it (all passages are in the corpus, and all
//! documents are in the pretraining text, as in MS MARCO where the corpus is pretrained on).
//!
//! The vocabulary is built from the generated text (every word whole, plus letters and digits as
//! a fallback), so a tiny model spends nothing on 30k unused embedding rows.

use std::collections::BTreeSet;

use crate::synthetic::{generate_documents, SyntheticDoc, TEMPLATES};

/// Sentences in one passage.
pub const SENTENCES_PER_PASSAGE: usize = 2;

/// One passage of the corpus.
pub struct Passage {
    pub pid: String,
    /// The person's name (the document title).
    pub title: String,
    pub text: String,
    /// Index of the document it comes from.
    pub doc: usize,
    /// Attribute keys its sentences state.
    pub states: BTreeSet<&'static str>,
}

/// A query and its relevant passages.
pub struct Query {
    pub qid: String,
    pub text: String,
    pub relevant: Vec<String>,
}

pub struct DemoData {
    pub docs: Vec<SyntheticDoc>,
    pub passages: Vec<Passage>,
    pub train_queries: Vec<Query>,
    pub dev_queries: Vec<Query>,
}

/// The question asked for each attribute, `{}` standing for the person's description.
const QUESTIONS: &[(&str, &str)] = &[
    ("color", "which color does {} like"),
    ("object", "what object does {} keep at home"),
    ("animal", "which animal does {} love"),
    ("occupation", "what is the job of {}"),
    ("food", "what food does {} enjoy"),
    ("year", "in which year was {} born"),
    ("number", "what number is linked to {}"),
];

/// `n_docs` documents of 6 to 12 sentences and their queries (module doc).
pub fn generate(n_docs: usize, train_fraction: f64, seed: u64) -> DemoData {
    let docs = generate_documents(n_docs, 6..=12, seed);
    let mut passages = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        for (i, chunk) in doc.sentences.chunks(SENTENCES_PER_PASSAGE).enumerate() {
            let first = i * SENTENCES_PER_PASSAGE;
            let states = doc.templates[first..first + chunk.len()]
                .iter()
                .flat_map(|&t| TEMPLATES[t].states.iter().copied())
                .collect();
            passages.push(Passage {
                pid: format!("{}-{i}", doc.docid),
                title: doc.title.clone(),
                text: chunk.join(" "),
                doc: d,
                states,
            });
        }
    }
    let n_train = ((n_docs as f64) * train_fraction).round() as usize;
    let (mut train_queries, mut dev_queries) = (Vec::new(), Vec::new());
    for (d, doc) in docs.iter().enumerate() {
        let who = format!("the person from {}", doc.topic.place);
        for &(key, question) in QUESTIONS {
            let relevant: Vec<String> = passages
                .iter()
                .filter(|p| p.doc == d && p.states.contains(key))
                .map(|p| p.pid.clone())
                .collect();
            // Unanswerable, or answerable from the town alone (the passage names it too).
            let lexical = passages
                .iter()
                .filter(|p| relevant.contains(&p.pid))
                .all(|p| p.states.contains("place"));
            if relevant.is_empty() || lexical {
                continue;
            }
            let q = Query {
                qid: format!("Q{d}-{key}"),
                text: question.replace("{}", &who),
                relevant,
            };
            if d < n_train {
                train_queries.push(q);
            } else {
                dev_queries.push(q);
            }
        }
    }
    DemoData {
        docs,
        passages,
        train_queries,
        dev_queries,
    }
}

/// BERT's basic tokenisation of ASCII text: lower-cased words, punctuation split off.
fn words(text: &str, out: &mut BTreeSet<String>) {
    let mut word = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c.to_ascii_lowercase());
            continue;
        }
        if !word.is_empty() {
            out.insert(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            out.insert(c.to_string());
        }
    }
    if !word.is_empty() {
        out.insert(word);
    }
}

impl DemoData {
    /// vocab.txt lines: the five specials, then every word of the passages, titles and queries,
    /// then letters and digits (word-initial and `##`) so no text maps to [UNK].
    pub fn vocab(&self) -> Vec<String> {
        let mut set = BTreeSet::new();
        let texts = self.passages.iter().flat_map(|p| [&p.text, &p.title]);
        let queries = self.train_queries.iter().chain(&self.dev_queries);
        for t in texts.chain(queries.map(|q| &q.text)) {
            words(t, &mut set);
        }
        for c in ('a'..='z').chain('0'..='9') {
            set.insert(c.to_string());
            set.insert(format!("##{c}"));
        }
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .map(|s| s.to_string())
            .chain(set)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_need_context_and_split_by_person() {
        let data = generate(60, 0.7, 5);
        assert!(data.train_queries.len() > 100 && data.dev_queries.len() > 40);
        let train_docs: BTreeSet<&str> = data
            .train_queries
            .iter()
            .map(|q| q.qid.split('-').next().unwrap())
            .collect();
        assert!(data
            .dev_queries
            .iter()
            .all(|q| !train_docs.contains(q.qid.split('-').next().unwrap())));
        for q in data.train_queries.iter().chain(&data.dev_queries) {
            let rel: Vec<&Passage> = data
                .passages
                .iter()
                .filter(|p| q.relevant.contains(&p.pid))
                .collect();
            assert_eq!(rel.len(), q.relevant.len());
            let person = &data.docs[rel[0].doc].topic;
            // The query names the town, never the person; some relevant passage lacks the town.
            assert!(q.text.contains(&person.place) && !q.text.contains(&person.name));
            assert!(
                rel.iter().any(|p| !p.text.contains(&person.place)),
                "{}",
                q.text
            );
        }
        let vocab = data.vocab();
        assert_eq!(&vocab[..5], ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]);
        let name = data.docs[0].topic.name.to_lowercase();
        assert!(vocab.contains(&name) && vocab.contains(&"##7".to_string()));
    }
}
