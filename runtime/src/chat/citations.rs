//! From an answer to the passages it used: the `[n]` markers a model writes, or, where it wrote
//! none, the passages whose words the answer repeats.
//!
//! # Markers
//!
//! [`markers`] reads ASCII square brackets holding one to three-digit numbers: `[1]`, `[2][3]`,
//! `[1, 2]`, `[1,2]`, `[ 3 ]`, and the footnote style `[^1]` (also `[^1, ^2]`). It ignores
//! brackets holding anything else (`[a]`, `[]`, `[1-3]`), numbers of more than three digits
//! (`[2024]`), the number 0, and brackets followed by `(` (a Markdown link such as `[1](url)`).
//!
//! # Overlap, where an answer has no valid marker
//!
//! *Content words*: the text is split at every character that is neither alphanumeric nor a
//! combining mark, each piece is lowercased (Unicode), and pieces shorter than
//! [`MIN_WORD_CHARS`] characters or in a small English stopword list (which also holds the
//! vocabulary of "I don't know" replies: *sorry*, *find*, *information*, …) are dropped. Each
//! content word becomes a *key* (a crude stemmer): the first suffix that applies of `-ing`,
//! `-ed`, `-ly` (each leaving at least four characters, then a doubled final consonant other
//! than `l`, `s`, `z` is undoubled) and `-s` (leaving at least three characters, not after
//! another `s`) is removed, then the first [`KEY_CHARS`] characters are kept. So *refunds*,
//! *refunded* and *refund* share `refund`, *shipped* and *ship* share `ship`, *delivery* and
//! *delivered* share `delive`.
//!
//! With `A` the set of the answer's keys, `Bᴬ` the set of pairs of consecutive answer keys, and
//! `Wₚ`, `Bₚ` the same for passage `p` (its title and text):
//!
//! ```text
//! score(p) = 0.7 · |A ∩ Wₚ| / |A|  +  0.3 · |Bᴬ ∩ Bₚ| / |Bᴬ|      (second term 0 when Bᴬ is empty)
//! ```
//!
//! An answer with fewer than [`MIN_CONTENT_WORDS`] distinct keys cites nothing. Otherwise the
//! passages with `score ≥ OVERLAP_THRESHOLD` (0.25) are taken best first (ties: lower number),
//! greedily: the first always, each further one only if it holds at least
//! [`MIN_NEW_COVERAGE`] (0.2) · |A| answer keys that no passage taken before holds — so passages
//! retrieved on the same topic are not all cited for an answer drawn from one of them — and at
//! most [`MAX_OVERLAP_CITATIONS`] (3).
//!
//! A reply that is the agent's no-answer message cites nothing: check it with [`is_no_answer`]
//! (its generic wording also falls below the minimum of content words in [`cite`]).
//!
//! Must not touch: storage, prompts or models — pure functions of the answer and passages.

use std::collections::HashSet;

use super::prompt::FALLBACK_NO_ANSWER_MESSAGE;
use super::Passage;

/// Smallest overlap score (see the module documentation) for which a passage is cited.
pub const OVERLAP_THRESHOLD: f32 = 0.25;

/// Weight of the share of answer keys a passage holds; the share of answer key pairs gets the rest.
pub const UNIGRAM_WEIGHT: f32 = 0.7;

/// Share of the answer's keys a further passage must add before it is cited too.
pub const MIN_NEW_COVERAGE: f32 = 0.2;

/// Most passages cited by overlap.
pub const MAX_OVERLAP_CITATIONS: usize = 3;

/// Fewest distinct content words an answer needs before it is attributed by overlap.
pub const MIN_CONTENT_WORDS: usize = 3;

/// Shortest content word, in characters.
pub const MIN_WORD_CHARS: usize = 3;

/// Characters of a content word its key keeps.
pub const KEY_CHARS: usize = 6;

/// Most digits a marker number may have.
const MAX_MARKER_DIGITS: usize = 3;

/// Words a reply may add around the no-answer message and still be it (see [`is_no_answer`]).
const NO_ANSWER_EXTRA_WORDS: usize = 5;

/// A passage an answer used.
#[derive(Debug, Clone, PartialEq)]
pub struct Cited {
    /// The passage's [`Passage::number`].
    pub number: usize,
    pub how: Attribution,
}

/// How a citation was found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attribution {
    /// The answer names the passage with a `[n]` marker.
    Marker,
    /// The answer has no marker but repeats the passage's words; `score` is defined in the
    /// module documentation.
    Overlap { score: f32 },
}

/// Every marker number in `answer`, in order of first appearance, without repeats.
pub fn markers(answer: &str) -> Vec<usize> {
    let bytes = answer.as_bytes();
    let mut numbers: Vec<usize> = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'[' {
            index += 1;
            continue;
        }
        let Some((found, length)) = parse_marker(&bytes[index..]) else {
            index += 1;
            continue;
        };
        index += length;
        let is_markdown_link = bytes.get(index) == Some(&b'(');
        if !is_markdown_link {
            for number in found {
                if number != 0 && !numbers.contains(&number) {
                    numbers.push(number);
                }
            }
        }
    }
    numbers
}

/// Parses a marker at the start of `text` (which starts with `[`): its numbers and its length
/// in bytes, `]` included. Only ASCII is involved, so byte offsets are character boundaries.
fn parse_marker(text: &[u8]) -> Option<(Vec<usize>, usize)> {
    let skip_blanks = |mut at: usize| {
        while matches!(text.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        at
    };
    let mut numbers = Vec::new();
    let mut at = 1;
    loop {
        at = skip_blanks(at);
        if text.get(at) == Some(&b'^') {
            at = skip_blanks(at + 1);
        }
        let digits = text[at..].iter().take_while(|byte| byte.is_ascii_digit()).count();
        if digits == 0 || digits > MAX_MARKER_DIGITS {
            return None;
        }
        let number = text[at..at + digits].iter().fold(0, |value, digit| value * 10 + usize::from(digit - b'0'));
        numbers.push(number);
        at = skip_blanks(at + digits);
        match text.get(at) {
            Some(b',') => at += 1,
            Some(b']') => return Some((numbers, at + 1)),
            _ => return None,
        }
    }
}

/// The passages `answer` used: those its markers name (in order of appearance), or, when no
/// marker names a passage, those it overlaps with (best first; see the module documentation).
pub fn cite(answer: &str, passages: &[Passage]) -> Vec<Cited> {
    let by_marker: Vec<Cited> = markers(answer)
        .into_iter()
        .filter(|number| passages.iter().any(|passage| passage.number == *number))
        .map(|number| Cited { number, how: Attribution::Marker })
        .collect();
    if !by_marker.is_empty() {
        return by_marker;
    }
    by_overlap(answer, passages)
}

/// Whether `answer` is the no-answer message (a blank one stands for the prompt's fallback):
/// its words, lowercased and without bare numbers, contain the message's words in a row, with at
/// most a few words more.
pub fn is_no_answer(answer: &str, no_answer_message: &str) -> bool {
    let message = match no_answer_message.trim() {
        "" => FALLBACK_NO_ANSWER_MESSAGE,
        message => message,
    };
    let words = |text: &str| -> Vec<String> {
        text.split(|character: char| !is_word_char(character))
            .filter(|word| !word.is_empty() && !word.chars().all(|character| character.is_ascii_digit()))
            .map(str::to_lowercase)
            .collect()
    };
    let message = words(message);
    let answer = words(answer);
    if message.is_empty() || answer.len() > message.len() + NO_ANSWER_EXTRA_WORDS {
        return false;
    }
    answer.windows(message.len()).any(|window| window == message.as_slice())
}

/// Cites by word overlap (see the module documentation).
fn by_overlap(answer: &str, passages: &[Passage]) -> Vec<Cited> {
    let answer_keys = content_keys(answer);
    let answer_words: HashSet<&str> = answer_keys.iter().map(String::as_str).collect();
    if answer_words.len() < MIN_CONTENT_WORDS {
        return Vec::new();
    }
    let answer_pairs = pairs(&answer_keys);

    let mut candidates: Vec<(f32, usize, HashSet<&str>)> = passages
        .iter()
        .filter_map(|passage| {
            let passage_keys = content_keys(&format!("{}\n{}", passage.title, passage.text));
            let passage_words: HashSet<&str> = passage_keys.iter().map(String::as_str).collect();
            let shared: HashSet<&str> =
                answer_words.iter().filter(|word| passage_words.contains(**word)).copied().collect();
            let shared_pairs = answer_pairs.intersection(&pairs(&passage_keys)).count();
            let score = overlap_score(shared.len(), answer_words.len(), shared_pairs, answer_pairs.len());
            (score >= OVERLAP_THRESHOLD).then_some((score, passage.number, shared))
        })
        .collect();
    candidates.sort_by(|left, right| right.0.total_cmp(&left.0).then(left.1.cmp(&right.1)));

    let min_new = MIN_NEW_COVERAGE * answer_words.len() as f32;
    let mut covered: HashSet<&str> = HashSet::new();
    let mut cited = Vec::new();
    for (score, number, shared) in candidates {
        if cited.len() == MAX_OVERLAP_CITATIONS {
            break;
        }
        let new_words = shared.difference(&covered).count();
        if !cited.is_empty() && (new_words as f32) < min_new {
            continue;
        }
        covered.extend(shared);
        cited.push(Cited { number, how: Attribution::Overlap { score } });
    }
    cited
}

/// `UNIGRAM_WEIGHT · shared_words / answer_words + (1 − UNIGRAM_WEIGHT) · shared_pairs / answer_pairs`.
fn overlap_score(shared_words: usize, answer_words: usize, shared_pairs: usize, answer_pairs: usize) -> f32 {
    let share = |part: usize, whole: usize| if whole == 0 { 0.0 } else { part as f32 / whole as f32 };
    UNIGRAM_WEIGHT * share(shared_words, answer_words) + (1.0 - UNIGRAM_WEIGHT) * share(shared_pairs, answer_pairs)
}

/// The keys of `text`'s content words, in order (see the module documentation).
fn content_keys(text: &str) -> Vec<String> {
    text.split(|character: char| !is_word_char(character))
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .filter(|word| word.chars().count() >= MIN_WORD_CHARS && STOPWORDS.binary_search(&word.as_str()).is_err())
        .map(|word| key(&word))
        .collect()
}

/// Pairs of consecutive keys.
fn pairs(keys: &[String]) -> HashSet<(&str, &str)> {
    keys.windows(2).map(|pair| (pair[0].as_str(), pair[1].as_str())).collect()
}

/// A lowercased content word's key: without its first matching suffix, at most [`KEY_CHARS`]
/// characters (see the module documentation).
fn key(word: &str) -> String {
    let stem_chars = |stem: &str| stem.chars().count();
    let stem = ["ing", "ed", "ly"]
        .iter()
        .find_map(|suffix| word.strip_suffix(suffix).filter(|stem| stem_chars(stem) >= 4).map(undouble))
        .or_else(|| word.strip_suffix('s').filter(|stem| stem_chars(stem) >= 3 && !stem.ends_with('s')))
        .unwrap_or(word);
    stem.chars().take(KEY_CHARS).collect()
}

/// `stem` without the second of a doubled final consonant other than `l`, `s` or `z`
/// (*shipp* → *ship*, but *fall* stays).
fn undouble(stem: &str) -> &str {
    let mut from_end = stem.chars().rev();
    match (from_end.next(), from_end.next()) {
        (Some(last), Some(before))
            if last == before
                && last.is_alphabetic()
                && !matches!(last, 'a' | 'e' | 'i' | 'o' | 'u' | 'l' | 's' | 'z') =>
        {
            &stem[..stem.len() - last.len_utf8()]
        }
        _ => stem,
    }
}

/// Letters, digits, and combining marks (so a decomposed `é` stays inside its word).
fn is_word_char(character: char) -> bool {
    character.is_alphanumeric()
        || matches!(character,
            '\u{0300}'..='\u{036F}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{FE20}'..='\u{FE2F}')
}

/// English function words of three or more letters, and the usual wording of "I don't know"
/// replies. Sorted, for binary search.
#[rustfmt::skip]
const STOPWORDS: &[&str] = &[
    "about", "above", "after", "again", "against", "all", "also", "and", "answer", "any", "are", "aren", "because",
    "been", "before", "being", "below", "between", "both", "but", "can", "cannot", "could", "couldn", "did", "didn",
    "does", "doesn", "doing", "don", "down", "during", "each", "else", "even", "every", "few", "find", "for", "found",
    "from", "further", "get", "had", "hadn", "has", "hasn", "have", "haven", "having", "hello", "help", "her", "here",
    "hers", "herself", "him", "himself", "his", "how", "however", "information", "into", "isn", "its", "itself",
    "just", "know", "let", "like", "made", "make", "many", "may", "more", "most", "much", "must", "myself", "need",
    "not", "now", "off", "once", "only", "other", "our", "ours", "ourselves", "out", "over", "own", "please",
    "question", "same", "shall", "she", "should", "shouldn", "since", "some", "sorry", "such", "sure", "than",
    "thank", "thanks", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they",
    "this", "those", "through", "too", "under", "unfortunately", "until", "upon", "very", "via", "want", "was",
    "wasn", "way", "well", "were", "weren", "what", "when", "where", "whether", "which", "while", "who", "whom",
    "whose", "why", "will", "with", "within", "without", "won", "would", "wouldn", "yes", "yet", "you", "your",
    "yours", "yourself", "yourselves",
];

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn passage(number: usize, title: &str, text: &str) -> Passage {
        Passage {
            number,
            document_id: Uuid::from_u128(number as u128),
            chunk_id: Uuid::from_u128(100 + number as u128),
            title: title.to_owned(),
            section: Vec::new(),
            text: text.to_owned(),
            score: 0.5,
            snippet: String::new(),
            highlights: Vec::new(),
        }
    }

    /// Three passages on different topics, as retrieval might rank them for a shop's FAQ.
    fn shop_passages() -> Vec<Passage> {
        vec![
            passage(
                1,
                "Shipping",
                "Orders are shipped within two business days from our warehouse in Hamburg. Delivery inside \
                 Germany takes three to five days; international delivery takes up to two weeks.",
            ),
            passage(
                2,
                "Returns and refunds",
                "You can return any unused item within 30 days of delivery for a full refund. Items must be in \
                 their original packaging. Refunds are paid to the original payment method within 14 days of \
                 receiving the return.",
            ),
            passage(
                3,
                "Warranty",
                "Every bicycle frame comes with a ten-year warranty against manufacturing defects. Components \
                 such as brakes, gears and tyres are covered for two years. The warranty does not cover wear \
                 and tear or accident damage.",
            ),
        ]
    }

    fn numbers(cited: &[Cited]) -> Vec<usize> {
        cited.iter().map(|cited| cited.number).collect()
    }

    fn all_by_overlap(cited: &[Cited]) -> bool {
        cited.iter().all(|cited| matches!(cited.how, Attribution::Overlap { score } if score >= OVERLAP_THRESHOLD))
    }

    fn check_markers(answer: &str, expected: &[usize]) {
        assert_eq!(markers(answer), expected, "markers of {answer:?}");
    }

    #[test]
    fn markers_are_read_in_every_supported_form() {
        check_markers("Open at 9 [1].", &[1]);
        check_markers("Yes [2][3], and also [1].", &[2, 3, 1]);
        check_markers("See [1, 2] and [4,5].", &[1, 2, 4, 5]);
        check_markers("Spaces [ 3 ] [\t7 ,  8\t].", &[3, 7, 8]);
        check_markers("Footnotes[^1] and[^2, ^3].", &[1, 2, 3]);
        check_markers("Repeats [2] [1] [2][1] [1, 2].", &[2, 1]);
        check_markers("Three digits [123] and leading zeros [007].", &[123, 7]);
        check_markers("[1]", &[1]);
        check_markers("Nested [[4]].", &[4]);
    }

    #[test]
    fn things_that_look_like_markers_are_ignored() {
        check_markers("A list [a] and [] and [ ] and [x1] and [1a].", &[]);
        check_markers("A [link](https://example.com) and [1](https://example.com/1).", &[]);
        check_markers("The year [2024] and [12345].", &[]);
        check_markers("Zero [0] and [0, 2].", &[2]);
        check_markers("Ranges [1-3], decimals [1.5], negatives [-1], plus [+1].", &[]);
        check_markers("Unclosed [1 and [2, and [3,].", &[]);
        check_markers("Full-width 【1】 and ［2］ are not ASCII.", &[]);
        check_markers("Double caret [^^1] and trailing caret [1^].", &[]);
        check_markers("", &[]);
    }

    #[test]
    fn explicit_markers_map_to_their_passages_in_order() {
        let passages = shop_passages();
        let cited = cite("Returns take 30 days [2]; shipping two days [1][2].", &passages);
        assert_eq!(
            cited,
            [Cited { number: 2, how: Attribution::Marker }, Cited { number: 1, how: Attribution::Marker },]
        );
    }

    #[test]
    fn markers_naming_no_passage_are_ignored() {
        let passages = shop_passages();
        assert_eq!(numbers(&cite("Frames have a warranty [3][7][42].", &passages)), [3]);

        // Only invalid markers: attribution falls back to overlap.
        let cited = cite("Every bicycle frame has a ten-year warranty against manufacturing defects [9].", &passages);
        assert_eq!(numbers(&cited), [3]);
        assert!(all_by_overlap(&cited));

        assert!(cite("Nothing here [5].", &passages).is_empty());
        assert!(cite("Anything [1].", &[]).is_empty());
    }

    #[test]
    fn a_markdown_link_is_not_a_marker() {
        let passages = shop_passages();
        let cited = cite("Read [1](https://example.com/blog) about our opening hours and parking spaces.", &passages);
        assert!(cited.is_empty(), "{cited:?}");
    }

    #[test]
    fn a_paraphrase_of_one_passage_attributes_to_that_passage_only() {
        let passages = shop_passages();
        let answer = "If the product is unused and still in its original packaging, you may send it back up to \
                      30 days after it was delivered; the money is refunded to the payment method you originally \
                      used, usually within two weeks of us receiving it.";
        let cited = cite(answer, &passages);
        assert_eq!(numbers(&cited), [2], "{cited:?}");
        assert!(all_by_overlap(&cited));
    }

    #[test]
    fn an_answer_drawn_from_two_passages_attributes_both_best_first() {
        let passages = shop_passages();
        let answer = "Orders are shipped from our Hamburg warehouse within two business days, and every bicycle \
                      frame has a ten-year warranty against manufacturing defects; brakes and gears are covered too.";
        let cited = cite(answer, &passages);
        let mut cited_numbers = numbers(&cited);
        cited_numbers.sort_unstable();
        assert_eq!(cited_numbers, [1, 3], "{cited:?}");
        assert!(all_by_overlap(&cited));
        let scores: Vec<f32> = cited
            .iter()
            .filter_map(|cited| match cited.how {
                Attribution::Overlap { score } => Some(score),
                Attribution::Marker => None,
            })
            .collect();
        assert!(scores.windows(2).all(|pair| pair[0] >= pair[1]));
    }

    #[test]
    fn an_unrelated_answer_attributes_to_none() {
        let passages = shop_passages();
        assert!(cite("Our Berlin shop is open Monday to Saturday, from ten in the morning.", &passages).is_empty());
        assert!(cite("Photosynthesis converts sunlight, water and carbon dioxide into glucose.", &passages).is_empty());
    }

    #[test]
    fn passages_on_one_topic_are_not_all_cited_for_an_answer_drawn_from_one() {
        let passages = vec![
            passage(1, "Refund policy", "Refunds for returned bikes are paid within 14 days to the original card."),
            passage(2, "Refund exceptions", "Custom-built bikes and gift cards cannot be refunded or returned."),
            passage(3, "Refund for accessories", "Accessories are refunded as store credit if returned in 30 days."),
        ];
        let answer = "Custom-built bikes cannot be refunded, and neither can gift cards.";
        assert_eq!(numbers(&cite(answer, &passages)), [2]);
    }

    #[test]
    fn at_most_three_passages_are_cited_by_overlap() {
        // Four passages that share a topic, each adding enough of its own to the answer.
        let own_words = [
            "apple orchard harvest basket",
            "bronze statue casting mould",
            "copper wire gauge spool",
            "diesel engine torque piston",
        ];
        let passages: Vec<Passage> = own_words
            .iter()
            .enumerate()
            .map(|(index, own)| passage(index + 1, "", &format!("mountain bicycle catalogue {own}")))
            .collect();
        let answer = format!("mountain bicycle catalogue: {}", own_words.join(", "));
        let cited = cite(&answer, &passages);
        assert_eq!(numbers(&cited), [1, 2, 3]);
        assert!(all_by_overlap(&cited));
    }

    #[test]
    fn short_empty_and_no_answer_replies_cite_nothing() {
        let passages = shop_passages();
        for answer in [
            "",
            "   ",
            "Yes.",
            "Refund warranty.",
            "Sorry, I can't find that in our documentation.",
            "I'm sorry, I don't have information about that.",
            "Unfortunately I don't know the answer to that question.",
        ] {
            assert!(cite(answer, &passages).is_empty(), "{answer:?}");
        }
    }

    #[test]
    fn the_no_answer_message_is_recognised_with_small_variations() {
        let message = "Sorry, I can't find that in our documentation.";
        assert!(is_no_answer(message, message));
        assert!(is_no_answer("sorry i CAN'T find that in our documentation", message));
        assert!(is_no_answer("Sorry, I can't find that in our documentation [1].", message));
        assert!(is_no_answer("Hello! Sorry, I can't find that in our documentation. Anything else?", message));
        assert!(!is_no_answer(
            "Sorry, I can't find that in our documentation, but here is a long answer anyway.",
            message
        ));
        assert!(!is_no_answer("Returns are accepted within 30 days [2].", message));
        assert!(!is_no_answer("", message));
        assert!(is_no_answer(FALLBACK_NO_ANSWER_MESSAGE, "  "));
    }

    #[test]
    fn keys_lowercase_unicode_strip_plurals_and_truncate() {
        assert_eq!(
            content_keys("The Refunds were REFUNDED by the refund desk"),
            ["refund", "refund", "refund", "desk"]
        );
        assert_eq!(content_keys("Größe ÉCOLE écoles straße"), ["größe", "école", "école", "straße"]);
        assert_eq!(content_keys("glass bus gas process days"), ["glass", "bus", "gas", "proces", "day"]);
        assert_eq!(
            content_keys("shipped ship shipping stopped falling fall"),
            ["ship", "ship", "ship", "stop", "fall", "fall"]
        );
        assert_eq!(
            content_keys("delivered delivery deliveries string strings"),
            ["delive", "delive", "delive", "string", "string"]
        );
        assert_eq!(content_keys("early usually used weekly"), ["early", "usual", "used", "week"]);
        assert_eq!(content_keys("ünterstützing größeed"), ["ünters", "größe"]);
        assert_eq!(content_keys("cafe\u{301} naïve"), ["cafe\u{301}", "naïve"]);
        assert_eq!(content_keys("a an to of it's don't 42 2024"), ["2024"]);
    }

    #[test]
    fn stopwords_are_sorted_lowercase_and_long_enough_to_matter() {
        assert!(STOPWORDS.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(STOPWORDS.iter().all(|word| word.chars().count() >= MIN_WORD_CHARS && word.to_lowercase() == *word));
    }

    #[test]
    fn odd_input_never_panics() {
        let passages = shop_passages();
        let odd = [
            "[[[[]]]]",
            "[",
            "]",
            "[^",
            "[^]",
            "[1",
            "[1,",
            "[99999999999999999999999999]",
            "[^1](",
            "😀😀😀 [😀] [1😀] 🇩🇪",
            "e\u{301}\u{301}\u{301} [\u{301}1]",
            "\u{0}\u{1}[\u{7f}2]",
            "مرحبا [1] שלום",
            "ǅ İstanbul ΣΑΣ ﬃ",
            "\u{200d}\u{fe0f}[ ^ 2 ]",
        ];
        for text in odd {
            let found = markers(text);
            assert!(found.iter().all(|number| (1..=999).contains(number)));
            let _ = cite(text, &passages);
            let _ = is_no_answer(text, text);
        }
        check_markers("\u{200d}\u{fe0f}[ ^ 2 ]", &[2]);

        // Random strings over a tricky alphabet.
        let alphabet: Vec<char> = "[]^, 0123456789a(é😀\u{301}\t".chars().collect();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..(state % 24) {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                text.push(alphabet[(state >> 33) as usize % alphabet.len()]);
            }
            state = state.wrapping_add(1);
            let found = markers(&text);
            assert!(found.iter().all(|number| (1..=999).contains(number)), "{text:?}");
            let unique: HashSet<&usize> = found.iter().collect();
            assert_eq!(unique.len(), found.len());
            let _ = cite(&text, &passages);
        }
    }
}
