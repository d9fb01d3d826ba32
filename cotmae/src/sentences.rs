//! A rule-based sentence splitter for English prose, standing in for NLTK punkt (which the
//! original CoT-MAE preprocessing used). It returns slices of the input, trimmed, in order; the
//! slices cover every non-whitespace character of the input exactly once.
//!
//! A sentence boundary is placed after a *terminator run* when all of these hold:
//! 1. the run is one or more of `. ! ? …` (so `?!`, `!!!` and `...` are single runs), optionally
//!    followed by closing quotes/brackets (`" ' ” ’ ) ] } »`), which stay with the sentence;
//! 2. whitespace follows (so `3.14`, `example.com/a.b`, `a.b@example.com`, `U.S.A` inside a
//!    token never split);
//! 3. the next non-space character starts a sentence: an upper-case letter, a digit, or an opening
//!    quote/bracket (`" ' “ ‘ ( [ { «`); after an ellipsis (`..`, `...`, `…`) only an upper-case
//!    letter counts (`wait... 3 more` and `he said... "no"` stay together);
//! 4. for a run that is a single `.`, the word before it (from the previous whitespace, leading
//!    opening quotes/brackets removed) is none of:
//!    - a known abbreviation ([`ABBREVIATIONS`], case-insensitive: `Mr. Dr. St. vs. etc. Inc. al.`);
//!    - a number-only abbreviation ([`NUMBER_ABBREVIATIONS`]: `No. Fig. Vol. pp.`) when the next
//!      word starts with a digit (`No. 5`; but `I said no. Then` splits);
//!    - a single letter: an initial (`J. K. Rowling`);
//!    - a dotted acronym: two or more dot-separated pieces of one or two letters
//!      (`U.S.`, `e.g.`, `i.e.`, `a.m.`, `Ph.D.`); `example.com.` is not one and splits;
//!    - a list label: one to three digits that are the first word of the current sentence or
//!      follow a word ending in `:` (`Steps: 1. Open it. 2. Close it.` gives `Steps: 1. Open it.`
//!      and `2. Close it.`), whereas `I counted to 10. Then` splits.
//!
//! Newlines: a blank line (two or more newlines, possibly with spaces between) is always a
//! boundary (a paragraph break); a single newline is ordinary whitespace, as in punkt. Inputs of the
//! pipeline are one document a line, so in practice neither occurs inside a document.
//!
//! Known limits (shared with punkt in spirit): an abbreviation or acronym that really ends a
//! sentence (`He moved to the U.S. Then ...`) does not split; a sentence that starts with a
//! lower-case letter is glued to the previous one.

/// Abbreviations (lower case, without the final dot) after which a `.` never ends a sentence.
pub const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "messrs", "dr", "prof", "st", "sr", "jr", "vs", "etc", "inc", "ltd", "co",
    "corp", "llc", "al", "gen", "col", "lt", "sgt", "capt", "cmdr", "adm", "gov", "sen", "rep",
    "rev", "hon", "pres", "mt", "ft", "ave", "blvd", "rd", "dept", "univ", "assn", "bros", "est",
    "approx", "ca", "cf", "viz", "jan", "feb", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "tue", "tues", "thu", "thurs", "fri",
];

/// Abbreviations that never end a sentence when a number follows (`No. 5`, `Fig. 3`).
pub const NUMBER_ABBREVIATIONS: &[&str] = &[
    "no", "nos", "fig", "figs", "vol", "vols", "pp", "art", "sec", "ch", "eq", "eqs", "ref", "tab",
    "op", "nr",
];

const TERMINATORS: &[char] = &['.', '!', '?', '…'];
const CLOSERS: &[char] = &['"', '\'', '”', '’', ')', ']', '}', '»'];
const OPENERS: &[char] = &['"', '\'', '“', '‘', '(', '[', '{', '«'];

/// Splits `text` into sentences (see the module doc for the rules). Empty pieces are dropped.
pub fn split_sentences(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let byte_at = |i: usize| if i < n { chars[i].0 } else { text.len() };
    let mut out = Vec::new();
    let mut start = 0usize; // byte offset of the current sentence
    let mut i = 0usize;
    fn push<'a>(out: &mut Vec<&'a str>, s: &'a str) {
        let s = s.trim();
        if !s.is_empty() {
            out.push(s);
        }
    }
    while i < n {
        let c = chars[i].1;
        if c == '\n' {
            // Paragraph break: whitespace from here containing two or more newlines.
            let mut j = i;
            let mut newlines = 0;
            while j < n && chars[j].1.is_whitespace() {
                newlines += (chars[j].1 == '\n') as usize;
                j += 1;
            }
            if newlines >= 2 {
                push(&mut out, &text[start..byte_at(i)]);
                start = byte_at(j);
            }
            i = j;
            continue;
        }
        if !TERMINATORS.contains(&c) {
            i += 1;
            continue;
        }
        // The terminator run [i, run_end) and its closers [run_end, k).
        let mut run_end = i;
        while run_end < n && TERMINATORS.contains(&chars[run_end].1) {
            run_end += 1;
        }
        let mut k = run_end;
        while k < n && CLOSERS.contains(&chars[k].1) {
            k += 1;
        }
        let mut m = k;
        while m < n && chars[m].1.is_whitespace() {
            m += 1;
        }
        if m == k || m == n {
            // No whitespace after the run (inside a token), or the end of the text.
            i = run_end;
            continue;
        }
        let next = chars[m].1;
        let run: String = chars[i..run_end].iter().map(|&(_, c)| c).collect();
        let ellipsis = run.starts_with("..") || run.contains('…');
        let starts_sentence = if ellipsis {
            next.is_uppercase()
        } else {
            next.is_uppercase() || next.is_ascii_digit() || OPENERS.contains(&next)
        };
        if starts_sentence && (run != "." || !period_is_protected(text, start, chars[i].0, next)) {
            push(&mut out, &text[start..byte_at(k)]);
            start = byte_at(m);
        }
        i = m;
    }
    push(&mut out, &text[start..]);
    out
}

/// Whether the single `.` at byte `dot` (in the sentence starting at byte `start`) belongs to
/// the word before it rather than ending the sentence; `next` is the next non-space character.
fn period_is_protected(text: &str, start: usize, dot: usize, next: char) -> bool {
    let before = &text[start..dot];
    let word_start = before
        .rfind(char::is_whitespace)
        .map(|p| p + before[p..].chars().next().map_or(1, char::len_utf8))
        .unwrap_or(0);
    let word = before[word_start..].trim_start_matches(OPENERS);
    if word.is_empty() {
        return false;
    }
    let lower = word.to_lowercase();
    if ABBREVIATIONS.contains(&lower.as_str()) {
        return true;
    }
    if next.is_ascii_digit() && NUMBER_ABBREVIATIONS.contains(&lower.as_str()) {
        return true;
    }
    let mut letters = word.chars();
    if let (Some(c), None) = (letters.next(), letters.next()) {
        if c.is_alphabetic() {
            return true; // an initial
        }
    }
    if is_dotted_acronym(word) {
        return true;
    }
    if word.len() <= 3 && word.bytes().all(|b| b.is_ascii_digit()) {
        // A list label when it opens the sentence or follows "...:".
        let prev = before[..word_start].trim_end();
        return prev.is_empty() || prev.ends_with(':');
    }
    false
}

/// `U.S`, `e.g`, `Ph.D`, `a.m`: two or more dot-separated pieces of one or two letters.
fn is_dotted_acronym(word: &str) -> bool {
    let pieces: Vec<&str> = word.split('.').collect();
    pieces.len() >= 2
        && pieces.iter().all(|p| {
            let n = p.chars().count();
            (1..=2).contains(&n) && p.chars().all(char::is_alphabetic)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        split_sentences(s)
    }

    #[test]
    fn basic_terminators_and_runs() {
        assert_eq!(
            split("It rained. Did it stop? Yes!! It did?! Fine."),
            ["It rained.", "Did it stop?", "Yes!!", "It did?!", "Fine."]
        );
        assert_eq!(split("  one sentence only  "), ["one sentence only"]);
        assert!(split("   ").is_empty());
        assert!(split("").is_empty());
    }

    #[test]
    fn next_word_must_start_a_sentence() {
        // Lower-case after the terminator: no split (punkt would mostly agree).
        assert_eq!(
            split("Yahoo! is a company. It exists."),
            ["Yahoo! is a company.", "It exists."]
        );
        // Digits and opening quotes/brackets start sentences.
        assert_eq!(split("Done. 42 left."), ["Done.", "42 left."]);
        assert_eq!(
            split("Done. \"Really?\" Yes."),
            ["Done.", "\"Really?\"", "Yes."]
        );
        assert_eq!(
            split("Done. (Not quite.) Ok."),
            ["Done.", "(Not quite.)", "Ok."]
        );
    }

    #[test]
    fn closing_quotes_and_brackets_stay_with_the_sentence() {
        assert_eq!(
            split("He said \"Stop.\" Then he left."),
            ["He said \"Stop.\"", "Then he left."]
        );
        assert_eq!(
            split("It was (see above.) Next one."),
            ["It was (see above.)", "Next one."]
        );
        assert_eq!(
            split("She wrote “Go!” Then slept."),
            ["She wrote “Go!”", "Then slept."]
        );
    }

    #[test]
    fn abbreviations_do_not_split() {
        assert_eq!(
            split("Mr. Smith met Dr. Jones at St. Mary Church. They talked."),
            [
                "Mr. Smith met Dr. Jones at St. Mary Church.",
                "They talked."
            ]
        );
        assert_eq!(
            split("Smith et al. Showed it. Yes."),
            ["Smith et al. Showed it.", "Yes."]
        );
        assert_eq!(
            split("Cats vs. Dogs is old. Really."),
            ["Cats vs. Dogs is old.", "Really."]
        );
        assert_eq!(split("PROF. X spoke. Done."), ["PROF. X spoke.", "Done."]);
        assert_eq!(
            split("Acme Inc. Makes it. Ok."),
            ["Acme Inc. Makes it.", "Ok."]
        );
        assert_eq!(
            split("I saw the sun. Then it set."),
            ["I saw the sun.", "Then it set."]
        );
    }

    #[test]
    fn number_abbreviations_only_before_numbers() {
        assert_eq!(
            split("See No. 5 and Fig. 3 here. Ok."),
            ["See No. 5 and Fig. 3 here.", "Ok."]
        );
        assert_eq!(
            split("I said no. Then I left."),
            ["I said no.", "Then I left."]
        );
    }

    #[test]
    fn initials_do_not_split() {
        assert_eq!(
            split("J. K. Rowling wrote it. She is famous."),
            ["J. K. Rowling wrote it.", "She is famous."]
        );
    }

    #[test]
    fn dotted_acronyms_do_not_split() {
        assert_eq!(
            split("Use fruit, e.g. Apples and i.e. Pears. The U.S. Army came at 5 a.m. Today."),
            [
                "Use fruit, e.g. Apples and i.e. Pears.",
                "The U.S. Army came at 5 a.m. Today."
            ]
        );
        assert_eq!(
            split("He has a Ph.D. From MIT."),
            ["He has a Ph.D. From MIT."]
        );
    }

    #[test]
    fn decimals_urls_and_emails_do_not_split() {
        assert_eq!(
            split("Pi is 3.14 roughly. Ok."),
            ["Pi is 3.14 roughly.", "Ok."]
        );
        assert_eq!(
            split("Visit example.com/a.b?x=1 or mail a.b@example.org now. Thanks."),
            [
                "Visit example.com/a.b?x=1 or mail a.b@example.org now.",
                "Thanks."
            ]
        );
        // A domain that ends the sentence is not an acronym: it splits.
        assert_eq!(
            split("Go to example.com. Then log in."),
            ["Go to example.com.", "Then log in."]
        );
    }

    #[test]
    fn ellipsis_inside_text() {
        assert_eq!(
            split("Wait... what now? Hmm."),
            ["Wait... what now?", "Hmm."]
        );
        assert_eq!(split("Wait... 3 more. Ok."), ["Wait... 3 more.", "Ok."]);
        assert_eq!(
            split("He paused... Then left."),
            ["He paused...", "Then left."]
        );
        assert_eq!(split("He paused… Then left."), ["He paused…", "Then left."]);
    }

    #[test]
    fn numbered_list_items() {
        assert_eq!(
            split("Steps: 1. Open the box. 2. Remove the lid. 3. Enjoy."),
            ["Steps: 1. Open the box.", "2. Remove the lid.", "3. Enjoy."]
        );
        assert_eq!(split("1. First item here."), ["1. First item here."]);
        assert_eq!(
            split("I counted to 10. Then I stopped."),
            ["I counted to 10.", "Then I stopped."]
        );
    }

    #[test]
    fn newlines() {
        assert_eq!(
            split("One line\nstill one. Two."),
            ["One line\nstill one.", "Two."]
        );
        assert_eq!(
            split("Heading\n\nbody text here"),
            ["Heading", "body text here"]
        );
        assert_eq!(split("A para.\n \n\nNext para."), ["A para.", "Next para."]);
    }

    #[test]
    fn pieces_cover_the_input() {
        let text = "Mr. A went to the U.S. in 1999. He said \"hi!\" (Twice.) 2. Then... More? Yes.";
        let parts = split(text);
        let joined: String = parts.concat();
        let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let joined_squeezed: String = joined.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(joined_squeezed, squeezed);
        assert!(parts.len() >= 4, "{parts:?}");
    }
}
