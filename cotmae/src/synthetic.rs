//! A deterministic synthetic corpus (no external text) for tests and demos.
//!
//! Design: every document is about one [`Topic`], a made-up person with attributes (a name built
//! from syllables, unique within a corpus; a made-up home town; a colour, an object, an animal, an
//! occupation, a food, a number and a year drawn from fixed lists and ranges). Each sentence fills
//! one of [`TEMPLATES`] with the topic: it always names the person and states or relates one to
//! three attributes, so the sentences of a document belong together and context within a document
//! carries information (a span's neighbours mention the same person and more of their
//! attributes), while different documents share vocabulary and sentence shapes. A retrieval demo
//! can ask for one attribute ("Which colour does Velora like?") and the relevant passage is the
//! chunk of that person's document stating it; [`Topic::attributes`] lists the facts.
//!
//! Sentences are built to split cleanly with `sentences::split_sentences`: each starts with an
//! upper-case letter and ends with `.` after an ordinary word or a four-digit year, never after
//! an abbreviation, an initial or a short number.
//!
//! Randomness: `tensor::Rng`, document `d` drawing from the counter blocks of item `d` under the
//! seed (see `draw::item_rng`), so a document does not depend on how many were generated; a name
//! collision is re-drawn from the same document's stream.

use std::collections::HashSet;
use std::io::Write;
use std::ops::RangeInclusive;
use std::path::Path;

use tensor::Rng;

use crate::{draw, Error, Result};

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ven", "tor", "sel", "dri", "na", "bo", "quin", "zar", "el", "ith",
    "mar", "ol", "ri", "sa", "tem", "ul", "vi", "wen", "xa", "yor", "ze", "fen", "gal", "hu",
    "jas", "kor", "lum", "nix", "pra", "rho", "sun", "tal", "bra", "cor", "dun", "ema",
];
const PLACE_SUFFIXES: &[&str] = &[
    "ton", "vale", "burg", "ford", "mere", "wick", "stead", "holm",
];
const COLORS: &[&str] = &[
    "red", "blue", "green", "yellow", "purple", "orange", "black", "white", "silver", "golden",
    "brown", "pink", "teal", "crimson", "violet", "grey",
];
const OBJECTS: &[&str] = &[
    "lamp",
    "bicycle",
    "violin",
    "kettle",
    "umbrella",
    "telescope",
    "clock",
    "notebook",
    "guitar",
    "camera",
    "compass",
    "lantern",
    "typewriter",
    "chessboard",
    "kite",
    "teapot",
    "radio",
    "map",
];
const ANIMALS: &[&str] = &[
    "cat", "dog", "parrot", "horse", "rabbit", "turtle", "goat", "owl", "fox", "hedgehog",
    "donkey", "goose", "lizard", "ferret",
];
const OCCUPATIONS: &[&str] = &[
    "baker",
    "teacher",
    "carpenter",
    "doctor",
    "painter",
    "sailor",
    "gardener",
    "engineer",
    "librarian",
    "farmer",
    "pilot",
    "musician",
    "tailor",
    "chemist",
    "journalist",
    "architect",
];
const FOODS: &[&str] = &[
    "apple pie",
    "lentil soup",
    "roasted chestnuts",
    "plum jam",
    "fried rice",
    "pumpkin bread",
    "mushroom stew",
    "honey cake",
    "grilled fish",
    "cheese dumplings",
    "pear tart",
    "bean salad",
];

/// The person a document is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topic {
    pub name: String,
    pub place: String,
    pub color: &'static str,
    pub object: &'static str,
    pub animal: &'static str,
    pub occupation: &'static str,
    pub food: &'static str,
    /// 2..=999
    pub number: u32,
    /// 1850..=2020
    pub year: u32,
}

impl Topic {
    /// The attributes as (key, value) pairs: `place`, `color`, `object`, `animal`,
    /// `occupation`, `food`, `number`, `year`.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("place", self.place.clone()),
            ("color", self.color.to_string()),
            ("object", self.object.to_string()),
            ("animal", self.animal.to_string()),
            ("occupation", self.occupation.to_string()),
            ("food", self.food.to_string()),
            ("number", self.number.to_string()),
            ("year", self.year.to_string()),
        ]
    }
}

/// A sentence template: the attribute keys it states, and its text builder.
pub struct Template {
    pub states: &'static [&'static str],
    pub build: fn(&Topic) -> String,
}

macro_rules! templates {
    ($([$($key:literal),*] |$t:ident| $fmt:expr),* $(,)?) => {
        &[$(Template { states: &[$($key),*], build: |$t: &Topic| $fmt }),*]
    };
}

/// Every sentence names the person and states the listed attributes.
pub const TEMPLATES: &[Template] = templates![
    ["place", "year"] | t | format!("{} was born in {} in the year {}.", t.name, t.place, t.year),
    ["occupation", "place"] | t | format!("{} works as a {} in {}.", t.name, t.occupation, t.place),
    ["color"] | t | format!("The favorite color of {} is {}.", t.name, t.color),
    ["color", "object"] | t | format!("{} keeps a {} {} at home.", t.name, t.color, t.object),
    ["place", "occupation", "object"]
        | t
        | format!(
            "People in {} know {} as the {} with the old {}.",
            t.place, t.name, t.occupation, t.object
        ),
    ["number", "object"]
        | t
        | format!(
            "{} has collected {} {}s over the years.",
            t.name, t.number, t.object
        ),
    ["food"]
        | t
        | format!(
            "When asked about food, {} always recommends {}.",
            t.name, t.food
        ),
    ["year", "place", "occupation"]
        | t
        | format!(
            "In {}, {} moved to {} to work as a {}.",
            t.year, t.name, t.place, t.occupation
        ),
    ["animal"] | t | format!("The {} is the favorite animal of {}.", t.animal, t.name),
    ["food"]
        | t
        | format!(
            "Friends say that {} cannot live without {}.",
            t.name, t.food
        ),
    ["place", "color"]
        | t
        | format!(
            "{} painted the front door of the house in {} {}.",
            t.name, t.place, t.color
        ),
    ["year", "place"]
        | t
        | format!(
            "Since {}, {} has lived near the old market of {}.",
            t.year, t.name, t.place
        ),
    ["place", "object"]
        | t
        | format!(
            "Nobody in {} owns more {}s than {}.",
            t.place, t.object, t.name
        ),
    ["color", "animal"]
        | t
        | format!(
            "A {} {} appears in every story that {} tells.",
            t.color, t.animal, t.name
        ),
    ["number", "place"]
        | t
        | format!(
            "{} once walked {} kilometers from {} without stopping.",
            t.name, t.number, t.place
        ),
    ["year"]
        | t
        | format!(
            "Ask {} about the year {} and you will hear a long story.",
            t.name, t.year
        ),
    ["occupation", "food"]
        | t
        | format!(
            "The {} {} is well known for a love of {}.",
            t.occupation, t.name, t.food
        ),
    ["object", "place"]
        | t
        | format!(
            "On weekends {} repairs broken {}s for the neighbours in {}.",
            t.name, t.object, t.place
        ),
    ["animal", "number"]
        | t
        | format!(
            "{} feeds {} stray animals, and each one is a {}.",
            t.name, t.number, t.animal
        ),
    ["occupation"]
        | t
        | format!(
            "Before becoming a {}, {} tried many other jobs.",
            t.occupation, t.name
        ),
];

/// One generated document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticDoc {
    /// `D<index>`
    pub docid: String,
    /// The person's name.
    pub title: String,
    pub topic: Topic,
    pub sentences: Vec<String>,
    /// Index into [`TEMPLATES`] of each sentence.
    pub templates: Vec<usize>,
}

impl SyntheticDoc {
    /// The body: the sentences joined by spaces.
    pub fn text(&self) -> String {
        self.sentences.join(" ")
    }
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[draw::index(rng, items.len())]
}

fn capitalized_word(rng: &mut Rng, syllables: RangeInclusive<usize>) -> String {
    let n = draw::range_inclusive(rng, *syllables.start(), *syllables.end());
    let word: String = (0..n).map(|_| pick(rng, SYLLABLES)).collect();
    let mut chars = word.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or('X');
    std::iter::once(first).chain(chars).collect()
}

fn topic(rng: &mut Rng, name: String) -> Topic {
    let place = capitalized_word(rng, 1..=2) + pick(rng, PLACE_SUFFIXES);
    Topic {
        name,
        place,
        color: pick(rng, COLORS),
        object: pick(rng, OBJECTS),
        animal: pick(rng, ANIMALS),
        occupation: pick(rng, OCCUPATIONS),
        food: pick(rng, FOODS),
        number: draw::range_inclusive(rng, 2, 999) as u32,
        year: draw::range_inclusive(rng, 1850, 2020) as u32,
    }
}

/// `n_docs` documents with a sentence count uniform in `sentences_per_doc` each.
pub fn generate_documents(
    n_docs: usize,
    sentences_per_doc: RangeInclusive<usize>,
    seed: u64,
) -> Vec<SyntheticDoc> {
    let mut names = HashSet::new();
    (0..n_docs)
        .map(|d| {
            let mut rng = draw::item_rng(seed, d as u64);
            let name = loop {
                let name = capitalized_word(&mut rng, 2..=3);
                if names.insert(name.clone()) {
                    break name;
                }
            };
            let topic = topic(&mut rng, name);
            let count = draw::range_inclusive(
                &mut rng,
                *sentences_per_doc.start(),
                *sentences_per_doc.end(),
            );
            let templates: Vec<usize> = (0..count)
                .map(|_| draw::index(&mut rng, TEMPLATES.len()))
                .collect();
            SyntheticDoc {
                docid: format!("D{d}"),
                title: topic.name.clone(),
                sentences: templates
                    .iter()
                    .map(|&i| (TEMPLATES[i].build)(&topic))
                    .collect(),
                templates,
                topic,
            }
        })
        .collect()
}

/// The texts of [`generate_documents`].
pub fn generate(n_docs: usize, sentences_per_doc: RangeInclusive<usize>, seed: u64) -> Vec<String> {
    generate_documents(n_docs, sentences_per_doc, seed)
        .iter()
        .map(SyntheticDoc::text)
        .collect()
}

fn write_lines(path: &Path, lines: impl Iterator<Item = String>) -> Result<()> {
    let io = |e| Error::io(path, e);
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for line in lines {
        w.write_all(line.as_bytes()).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)
}

/// Writes one document text a line.
pub fn write_plain_text(path: impl AsRef<Path>, docs: &[SyntheticDoc]) -> Result<()> {
    write_lines(path.as_ref(), docs.iter().map(SyntheticDoc::text))
}

/// Writes MS MARCO documents TSV: `docid \t url \t title \t body`.
pub fn write_msmarco_tsv(path: impl AsRef<Path>, docs: &[SyntheticDoc]) -> Result<()> {
    write_lines(
        path.as_ref(),
        docs.iter().map(|d| {
            format!(
                "{}\thttp://example.org/{}\t{}\t{}",
                d.docid,
                d.docid,
                d.title,
                d.text()
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sentences::split_sentences;

    #[test]
    fn deterministic_and_prefix_stable() {
        let a = generate_documents(30, 5..=12, 7);
        let b = generate_documents(30, 5..=12, 7);
        assert_eq!(a, b);
        let c = generate_documents(10, 5..=12, 7);
        assert_eq!(&a[..10], &c[..]);
        let d = generate_documents(30, 5..=12, 8);
        assert_ne!(a, d);
        assert_eq!(generate(30, 5..=12, 7)[3], a[3].text());
    }

    #[test]
    fn sentences_share_the_topic_and_split_cleanly() {
        let docs = generate_documents(200, 3..=20, 1);
        let names: HashSet<&str> = docs.iter().map(|d| d.topic.name.as_str()).collect();
        assert_eq!(names.len(), docs.len(), "names are unique");
        let mut used = vec![false; TEMPLATES.len()];
        for doc in &docs {
            assert!((3..=20).contains(&doc.sentences.len()));
            let text = doc.text();
            let split = split_sentences(&text);
            assert_eq!(split, doc.sentences, "the splitter recovers the sentences");
            for (s, &t) in doc.sentences.iter().zip(&doc.templates) {
                used[t] = true;
                assert!(s.contains(&doc.topic.name), "{s}");
                // Every attribute the template states appears in the sentence.
                for (key, value) in doc.topic.attributes() {
                    if TEMPLATES[t].states.contains(&key) {
                        assert!(s.contains(&value), "{key}={value} missing in {s}");
                    }
                }
            }
            // No other document's name appears in this one.
            for other in docs.iter().take(20) {
                if other.topic.name != doc.topic.name {
                    let word = format!(" {} ", other.topic.name);
                    assert!(!format!(" {text} ").contains(&word));
                }
            }
        }
        assert!(used.iter().all(|&u| u), "every template is used");
    }

    #[test]
    fn writes_plain_and_tsv() {
        let docs = generate_documents(3, 2..=3, 2);
        let dir = std::env::temp_dir().join(format!("cotmae-synth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_plain_text(dir.join("a.txt"), &docs).unwrap();
        write_msmarco_tsv(dir.join("a.tsv"), &docs).unwrap();
        let txt = std::fs::read_to_string(dir.join("a.txt")).unwrap();
        let tsv = std::fs::read_to_string(dir.join("a.tsv")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(txt.lines().count(), 3);
        for (line, doc) in tsv.lines().zip(&docs) {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 4);
            assert_eq!(
                (f[0], f[2], f[3]),
                (doc.docid.as_str(), doc.title.as_str(), doc.text().as_str())
            );
        }
    }
}
