//! Sentiment of a short text, computed locally with VADER (Hutto & Gilbert, 2014: "VADER: A
//! Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text"): a lexicon of
//! human-rated word valences and a handful of rules for how context changes them.
//!
//! The lexicon files ship in the `vaderSentiment` package ([`SENTIMENT_PACKAGE`], MIT licence,
//! installed beside its `LICENSE.txt`); this module implements the published rules so that its
//! scores match that package's `polarity_scores` (a test compares them sentence by sentence).
//!
//! The rules, in the order they apply to each word that has a valence in the lexicon:
//! - "no" directly before another rated word carries no valence of its own; a rated word up to
//!   three words after "no" (the third only across "or"/"nor") is negated;
//! - a word in capitals while other words are not is pushed 0.733 further from zero;
//! - each of the three preceding words that is not itself rated may be a booster (+0.293) or
//!   dampener (−0.293), in the word's direction, weighed 1, 0.95 and 0.9 by distance (and pushed
//!   by another 0.733 when in capitals among lower-case words); a negation among them multiplies
//!   the valence by −0.74, except "never so/this …" (× 1.25) and "without doubt";
//! - two- and three-word special phrases ("the bomb", "yeah right", "kiss of death", …) replace
//!   the valence, and "kind of"/"sort of" before a word dampen it;
//! - "least" before a word negates it, except after "at" or "very".
//!
//! Then the sentence: with "but", valences before it are halved and after it raised by half;
//! up to four "!" and two or more "?" add emphasis; the sum is normalised into −1…1 as
//! `s / sqrt(s² + 15)` (the compound score), and the shares of positive, neutral and negative
//! words make `pos`, `neu` and `neg`. Emoji are first replaced by their descriptions from the
//! package's emoji lexicon, when it is loaded.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use crate::error::ModelError;
use crate::packages::{installed_dir, ModelPackage};

/// The `vaderSentiment` wheel: the VADER lexicon, its emoji lexicon and the MIT licence.
pub const SENTIMENT_PACKAGE: ModelPackage = ModelPackage {
    name: "vaderSentiment",
    version: "3.3.2",
    wheel_file: "vaderSentiment-3.3.2-py2.py3-none-any.whl",
    sha256: "3bf1d243b98b1afad575b9f22bc2cb1e212b94ff89ca74f8a23a588d024ea311",
    model_dir: "vader-sentiment",
    members: &[
        ("vaderSentiment/vader_lexicon.txt", "vader_lexicon.txt"),
        ("vaderSentiment/emoji_utf8_lexicon.txt", "emoji_utf8_lexicon.txt"),
        ("vaderSentiment-3.3.2.dist-info/LICENSE.txt", "LICENSE.txt"),
    ],
    more_wheels: &[],
};

/// The word lexicon's file name in the installed package directory.
pub const LEXICON_FILE: &str = "vader_lexicon.txt";
/// The emoji lexicon's file name in the installed package directory.
pub const EMOJI_LEXICON_FILE: &str = "emoji_utf8_lexicon.txt";

/// How much a booster or dampener word moves a valence.
const BOOST: f64 = 0.293;
/// How much capitals (among lower-case words) move a valence.
const CAPS_BOOST: f64 = 0.733;
/// What a negation multiplies a valence by.
const NEGATION: f64 = -0.74;
/// The normalisation constant of the compound score: roughly the largest expected sum.
const ALPHA: f64 = 15.0;

/// Words that flip the valence of a rated word shortly after them (any word containing "n't"
/// does too).
const NEGATIONS: &[&str] = &[
    "aint",
    "arent",
    "cannot",
    "cant",
    "couldnt",
    "darent",
    "didnt",
    "doesnt",
    "ain't",
    "aren't",
    "can't",
    "couldn't",
    "daren't",
    "didn't",
    "doesn't",
    "dont",
    "hadnt",
    "hasnt",
    "havent",
    "isnt",
    "mightnt",
    "mustnt",
    "neither",
    "don't",
    "hadn't",
    "hasn't",
    "haven't",
    "isn't",
    "mightn't",
    "mustn't",
    "neednt",
    "needn't",
    "never",
    "none",
    "nope",
    "nor",
    "not",
    "nothing",
    "nowhere",
    "oughtnt",
    "shant",
    "shouldnt",
    "uhuh",
    "wasnt",
    "werent",
    "oughtn't",
    "shan't",
    "shouldn't",
    "uh-uh",
    "wasn't",
    "weren't",
    "without",
    "wont",
    "wouldnt",
    "won't",
    "wouldn't",
    "rarely",
    "seldom",
    "despite",
];

/// Degree adverbs that strengthen the next rated word.
const BOOSTERS: &[&str] = &[
    "absolutely",
    "amazingly",
    "awfully",
    "completely",
    "considerable",
    "considerably",
    "decidedly",
    "deeply",
    "effing",
    "enormous",
    "enormously",
    "entirely",
    "especially",
    "exceptional",
    "exceptionally",
    "extreme",
    "extremely",
    "fabulously",
    "flipping",
    "flippin",
    "frackin",
    "fracking",
    "fricking",
    "frickin",
    "frigging",
    "friggin",
    "fully",
    "fuckin",
    "fucking",
    "fuggin",
    "fugging",
    "greatly",
    "hella",
    "highly",
    "hugely",
    "incredible",
    "incredibly",
    "intensely",
    "major",
    "majorly",
    "more",
    "most",
    "particularly",
    "purely",
    "quite",
    "really",
    "remarkably",
    "so",
    "substantially",
    "thoroughly",
    "total",
    "totally",
    "tremendous",
    "tremendously",
    "uber",
    "unbelievably",
    "unusually",
    "utter",
    "utterly",
    "very",
];

/// Degree adverbs that weaken the next rated word (the multi-word ones only act as phrases).
const DAMPENERS: &[&str] = &[
    "almost",
    "barely",
    "hardly",
    "just enough",
    "kind of",
    "kinda",
    "kindof",
    "kind-of",
    "less",
    "little",
    "marginal",
    "marginally",
    "occasional",
    "occasionally",
    "partly",
    "scarce",
    "scarcely",
    "slight",
    "slightly",
    "somewhat",
    "sort of",
    "sorta",
    "sortof",
    "sort-of",
];

/// Phrases whose valence replaces that of the rated word inside them.
const SPECIAL_PHRASES: &[(&str, f64)] = &[
    ("the shit", 3.0),
    ("the bomb", 3.0),
    ("bad ass", 1.5),
    ("badass", 1.5),
    ("bus stop", 0.0),
    ("yeah right", -2.0),
    ("kiss of death", -1.5),
    ("to die for", 3.0),
    ("beating heart", 3.5),
];

/// VADER's four scores for one text.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    /// Share of the text's weight that is negative, 0…1.
    pub neg: f64,
    /// Share that is neutral, 0…1.
    pub neu: f64,
    /// Share that is positive, 0…1.
    pub pos: f64,
    /// The normalised sum of all valences: −1 (most negative) … +1 (most positive).
    pub compound: f64,
}

/// A loaded VADER lexicon (and optionally its emoji lexicon); cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct Vader {
    lexicon: HashMap<String, f64>,
    emoji: HashMap<char, String>,
}

impl std::fmt::Debug for Vader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Vader").field("words", &self.lexicon.len()).field("emoji", &self.emoji.len()).finish()
    }
}

/// One whitespace-separated word with surrounding punctuation removed (unless that would leave
/// two characters or fewer, which keeps emoticons such as ":)" whole).
struct Token {
    lower: String,
    capitals: bool,
}

impl Vader {
    /// Loads the word lexicon (`word<TAB>mean valence<TAB>…` per line), without emoji.
    pub fn load(lexicon_path: &Path) -> Result<Vader, ModelError> {
        let text = read(lexicon_path)?;
        let lexicon = parse_lexicon(&text).map_err(|reason| invalid(lexicon_path, reason))?;
        Ok(Vader { lexicon, emoji: HashMap::new() })
    }

    /// Also loads the emoji lexicon (`emoji<TAB>description` per line): emoji are read as their
    /// descriptions.
    pub fn with_emoji(mut self, emoji_path: &Path) -> Result<Vader, ModelError> {
        let text = read(emoji_path)?;
        self.emoji = parse_emoji(&text).map_err(|reason| invalid(emoji_path, reason))?;
        Ok(self)
    }

    /// Loads both lexicons of the installed `vaderSentiment` package from the model cache.
    pub fn installed(models_dir: &Path) -> Result<Vader, ModelError> {
        let dir = installed_dir(models_dir, &SENTIMENT_PACKAGE)?;
        Vader::load(&dir.join(LEXICON_FILE))?.with_emoji(&dir.join(EMOJI_LEXICON_FILE))
    }

    /// Builds a Vader from lexicon text already in memory (tests, embedded lexicons).
    pub fn from_text(lexicon: &str, emoji: Option<&str>) -> Result<Vader, String> {
        Ok(Vader { lexicon: parse_lexicon(lexicon)?, emoji: emoji.map(parse_emoji).transpose()?.unwrap_or_default() })
    }

    /// Words in the lexicon.
    pub fn len(&self) -> usize {
        self.lexicon.len()
    }

    /// True when the lexicon has no words.
    pub fn is_empty(&self) -> bool {
        self.lexicon.is_empty()
    }

    /// VADER's scores for `text` (best for one sentence or a short message).
    pub fn polarity(&self, text: &str) -> Scores {
        let text = self.describe_emoji(text);
        let tokens: Vec<Token> = text
            .split_whitespace()
            .map(|word| {
                let trimmed = word.trim_matches(|c: char| c.is_ascii_punctuation());
                let text = if trimmed.chars().count() <= 2 { word } else { trimmed };
                Token { lower: text.to_lowercase(), capitals: is_all_capitals(text) }
            })
            .collect();
        if tokens.is_empty() {
            return Scores::default();
        }
        let in_capitals = tokens.iter().filter(|token| token.capitals).count();
        let shouting_some = in_capitals > 0 && in_capitals < tokens.len();

        let mut valences: Vec<f64> = (0..tokens.len())
            .map(|index| {
                let word = tokens[index].lower.as_str();
                let kind_of = word == "kind" && tokens.get(index + 1).is_some_and(|next| next.lower == "of");
                if booster(word).is_some() || kind_of {
                    0.0
                } else {
                    self.word_valence(&tokens, index, shouting_some)
                }
            })
            .collect();
        if let Some(but) = tokens.iter().position(|token| token.lower == "but") {
            contrast(&mut valences, but);
        }
        score(&valences, &text)
    }

    /// Replaces each emoji with its description, separated from the preceding text by a space.
    fn describe_emoji(&self, text: &str) -> String {
        if self.emoji.is_empty() {
            return text.trim().to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut after_space = true;
        for character in text.chars() {
            match self.emoji.get(&character) {
                Some(description) => {
                    if !after_space {
                        out.push(' ');
                    }
                    out.push_str(description);
                    after_space = false;
                }
                None => {
                    out.push(character);
                    after_space = character == ' ';
                }
            }
        }
        out.trim().to_owned()
    }

    fn rated(&self, word: &str) -> bool {
        self.lexicon.contains_key(word)
    }

    /// The valence of the word at `index` in its context (0 for words the lexicon lacks).
    fn word_valence(&self, tokens: &[Token], index: usize, shouting_some: bool) -> f64 {
        let word = |offset: usize| tokens[index - offset].lower.as_str();
        let Some(&rated) = self.lexicon.get(&tokens[index].lower) else { return 0.0 };
        let mut valence = rated;

        // "no" before a rated word is a negation, not a negative word.
        if word(0) == "no" && tokens.get(index + 1).is_some_and(|next| self.rated(&next.lower)) {
            valence = 0.0;
        }
        let after_no = (index >= 1 && word(1) == "no")
            || (index >= 2 && word(2) == "no")
            || (index >= 3 && word(3) == "no" && matches!(word(1), "or" | "nor"));
        if after_no {
            valence = rated * NEGATION;
        }

        if tokens[index].capitals && shouting_some {
            valence += if valence > 0.0 { CAPS_BOOST } else { -CAPS_BOOST };
        }

        for (distance, weight) in [(1, 1.0), (2, 0.95), (3, 0.9)] {
            if index < distance || self.rated(word(distance)) {
                continue;
            }
            valence += weight * modifier(&tokens[index - distance], valence, shouting_some);
            valence = negate_within(valence, tokens, index, distance);
            if distance == 3 {
                valence = special_phrases(valence, tokens, index);
            }
        }

        // "least X" reads as "not X", but "at least" and "very least" do not.
        if index >= 1 && word(1) == "least" && !self.rated("least") {
            let comparative = index >= 2 && matches!(word(2), "at" | "very");
            if !comparative {
                valence *= NEGATION;
            }
        }
        valence
    }
}

/// A booster's or dampener's strength, for a single word.
fn booster(word: &str) -> Option<f64> {
    if BOOSTERS.contains(&word) {
        Some(BOOST)
    } else if DAMPENERS.contains(&word) {
        Some(-BOOST)
    } else {
        None
    }
}

/// What a preceding word adds to `valence`: a booster's or dampener's strength in the
/// valence's direction, more when the modifier alone is in capitals.
fn modifier(token: &Token, valence: f64, shouting_some: bool) -> f64 {
    let Some(strength) = booster(&token.lower) else { return 0.0 };
    let mut scalar = if valence < 0.0 { -strength } else { strength };
    if token.capitals && shouting_some {
        scalar += if valence > 0.0 { CAPS_BOOST } else { -CAPS_BOOST };
    }
    scalar
}

fn is_negation(word: &str) -> bool {
    NEGATIONS.contains(&word) || word.contains("n't")
}

/// Applies a negation `distance` words before the rated word at `index`.
fn negate_within(valence: f64, tokens: &[Token], index: usize, distance: usize) -> f64 {
    let word = |offset: usize| tokens[index - offset].lower.as_str();
    let so_or_this = |word: &str| matches!(word, "so" | "this");
    match distance {
        1 if is_negation(word(1)) => valence * NEGATION,
        2 if word(2) == "never" && so_or_this(word(1)) => valence * 1.25,
        2 if word(2) == "without" && word(1) == "doubt" => valence,
        2 if is_negation(word(2)) => valence * NEGATION,
        3 if (word(3) == "never" && so_or_this(word(2))) || so_or_this(word(1)) => valence * 1.25,
        3 if word(3) == "without" && (word(2) == "doubt" || word(1) == "doubt") => valence,
        3 if is_negation(word(3)) => valence * NEGATION,
        _ => valence,
    }
}

/// Special phrases around the rated word at `index` (at least three words in) replace its
/// valence; "kind of"/"sort of"/"just enough" just before it add a dampener's strength.
fn special_phrases(mut valence: f64, tokens: &[Token], index: usize) -> f64 {
    let word = |position: usize| tokens[position].lower.as_str();
    let phrase = |positions: &[usize]| positions.iter().map(|&position| word(position)).collect::<Vec<_>>().join(" ");
    let special = |text: &str| SPECIAL_PHRASES.iter().find(|(phrase, _)| *phrase == text).map(|(_, value)| *value);
    let (i1, i2, i3) = (index - 1, index - 2, index - 3);

    let before =
        [phrase(&[i1, index]), phrase(&[i2, i1, index]), phrase(&[i2, i1]), phrase(&[i3, i2, i1]), phrase(&[i3, i2])];
    if let Some(value) = before.iter().find_map(|text| special(text)) {
        valence = value;
    }
    if index + 1 < tokens.len() {
        if let Some(value) = special(&phrase(&[index, index + 1])) {
            valence = value;
        }
    }
    if index + 2 < tokens.len() {
        if let Some(value) = special(&phrase(&[index, index + 1, index + 2])) {
            valence = value;
        }
    }
    for text in [phrase(&[i3, i2, i1]), phrase(&[i3, i2]), phrase(&[i2, i1])] {
        if DAMPENERS.contains(&text.as_str()) {
            valence -= BOOST;
        }
    }
    valence
}

/// "but" shifts the weight to what follows it: valences before it are halved, after it raised
/// by half. As in the reference package, each value is located by its first equal value in the
/// list, so when a halved earlier valence equals a later one, the earlier position is scaled
/// again instead; this is kept so scores match the package's.
fn contrast(valences: &mut [f64], but: usize) {
    for position in 0..valences.len() {
        let value = valences[position];
        let Some(first) = valences.iter().position(|other| *other == value) else { continue };
        if first < but {
            valences[first] = value * 0.5;
        } else if first > but {
            valences[first] = value * 1.5;
        }
    }
}

/// Emphasis from punctuation: 0.292 per "!" (at most four), 0.18 per "?" when there are two or
/// three, 0.96 for more.
fn punctuation_emphasis(text: &str) -> f64 {
    let exclamations = text.matches('!').count().min(4);
    let questions = text.matches('?').count();
    let question_emphasis = match questions {
        0 | 1 => 0.0,
        2 | 3 => questions as f64 * 0.18,
        _ => 0.96,
    };
    exclamations as f64 * 0.292 + question_emphasis
}

fn score(valences: &[f64], text: &str) -> Scores {
    let emphasis = punctuation_emphasis(text);
    let mut sum: f64 = valences.iter().sum();
    if sum > 0.0 {
        sum += emphasis;
    } else if sum < 0.0 {
        sum -= emphasis;
    }
    let compound = (sum / (sum * sum + ALPHA).sqrt()).clamp(-1.0, 1.0);

    // Each rated word counts one more than its valence, so it outweighs a neutral word.
    let mut positive: f64 = valences.iter().filter(|v| **v > 0.0).map(|v| v + 1.0).sum();
    let mut negative: f64 = valences.iter().filter(|v| **v < 0.0).map(|v| v - 1.0).sum();
    let neutral = valences.iter().filter(|v| **v == 0.0).count() as f64;
    if positive > negative.abs() {
        positive += emphasis;
    } else if positive < negative.abs() {
        negative -= emphasis;
    }
    let total = positive + negative.abs() + neutral;
    if total == 0.0 {
        return Scores { compound, ..Scores::default() };
    }
    Scores { neg: (negative / total).abs(), neu: (neutral / total).abs(), pos: (positive / total).abs(), compound }
}

/// A word "in capitals": it has cased letters and none of them is lower case.
fn is_all_capitals(word: &str) -> bool {
    word.chars().any(char::is_uppercase) && !word.chars().any(char::is_lowercase)
}

fn parse_lexicon(text: &str) -> Result<HashMap<String, f64>, String> {
    let mut lexicon = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split('\t');
        let word = fields.next().unwrap_or_default();
        let valence = fields
            .next()
            .and_then(|field| field.trim().parse::<f64>().ok())
            .filter(|valence| valence.is_finite())
            .ok_or_else(|| format!("line {}: expected a word, a tab and a number", number + 1))?;
        lexicon.insert(word.to_owned(), valence);
    }
    if lexicon.is_empty() {
        return Err("the lexicon has no words".to_owned());
    }
    Ok(lexicon)
}

fn parse_emoji(text: &str) -> Result<HashMap<char, String>, String> {
    let mut emoji = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (symbol, description) = line
            .split_once('\t')
            .ok_or_else(|| format!("line {}: expected an emoji, a tab and a description", number + 1))?;
        let description = description.split('\t').next().unwrap_or_default();
        // Only single characters are ever looked up (sequences of several code points are not).
        let mut characters = symbol.chars();
        if let (Some(character), None) = (characters.next(), characters.next()) {
            emoji.insert(character, description.to_owned());
        }
    }
    Ok(emoji)
}

fn read(path: &Path) -> Result<String, ModelError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(ModelError::MissingModelFile { path: path.to_path_buf() })
        }
        Err(error) => Err(ModelError::io(path, error)),
    }
}

fn invalid(path: &Path, reason: String) -> ModelError {
    ModelError::InvalidModel { path: path.to_path_buf(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEXICON: &str = "good\t1.9\t0.9\t[2, 2]\nbad\t-2.5\t0.6\t[-3, -2]\ngreat\t3.1\t0.5\t[3]\n\
                           no\t-1.2\t0.7\t[-1]\nkind\t2.4\t0.6\t[2]\n:)\t2.0\t0.6\t[2]\nbomb\t-2.2\t0.8\t[-2]\n";
    const EMOJI: &str = "😀\tgood face\n👍🏽\tthumbs up: medium skin tone\n";

    fn vader() -> Vader {
        Vader::from_text(LEXICON, Some(EMOJI)).unwrap()
    }

    fn compound_of(sum: f64) -> f64 {
        sum / (sum * sum + ALPHA).sqrt()
    }

    fn close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
    }

    #[test]
    fn a_rated_word_among_neutral_ones() {
        let scores = vader().polarity("The food was good");
        close(scores.compound, compound_of(1.9));
        close(scores.pos, 2.9 / 5.9);
        close(scores.neu, 3.0 / 5.9);
        close(scores.neg, 0.0);
        assert_eq!(vader().polarity("   "), Scores::default());
        assert_eq!(vader().polarity("nothing rated here").compound, 0.0);
        close(vader().polarity("nothing rated here").neu, 1.0);
    }

    #[test]
    fn negation_within_three_words() {
        close(vader().polarity("not good").compound, compound_of(1.9 * NEGATION));
        close(vader().polarity("isn't really good").compound, compound_of((1.9 + BOOST) * NEGATION));
        close(vader().polarity("not at all a good").compound, compound_of(1.9));
        close(vader().polarity("never so good").compound, compound_of((1.9 + BOOST) * 1.25));
    }

    #[test]
    fn boosters_and_dampeners_weaken_with_distance() {
        close(vader().polarity("very good").compound, compound_of(1.9 + BOOST));
        close(vader().polarity("very bad").compound, compound_of(-2.5 - BOOST));
        close(vader().polarity("slightly good").compound, compound_of(1.9 - BOOST));
        close(vader().polarity("very the good").compound, compound_of(1.9 + 0.95 * BOOST));
        // "kind of" is a dampener phrase, and "kind" in it is not the kind of "kind".
        close(vader().polarity("it is kind of good").compound, compound_of(1.9 - BOOST));
    }

    #[test]
    fn capitals_among_lower_case_emphasise() {
        close(vader().polarity("it is GOOD").compound, compound_of(1.9 + CAPS_BOOST));
        close(vader().polarity("GOOD").compound, compound_of(1.9));
        close(vader().polarity("it is VERY good").compound, compound_of(1.9 + BOOST + CAPS_BOOST));
    }

    #[test]
    fn but_shifts_weight_to_what_follows() {
        close(vader().polarity("good but bad").compound, compound_of(1.9 * 0.5 - 2.5 * 1.5));
        // The package locates each value by its first equal value: the second 1.9 becomes
        // 2.85 only because the first was already halved.
        let mut valences = vec![1.9, 0.0, 1.9];
        contrast(&mut valences, 1);
        assert_eq!(valences, vec![0.95, 0.0, 1.9 * 1.5]);
        let mut valences = vec![2.0, 0.0, 1.0];
        contrast(&mut valences, 1);
        assert_eq!(valences, vec![0.5, 0.0, 1.0]);
    }

    #[test]
    fn punctuation_adds_emphasis() {
        close(vader().polarity("good!").compound, compound_of(1.9 + 0.292));
        close(vader().polarity("good!!!!!!").compound, compound_of(1.9 + 4.0 * 0.292));
        close(vader().polarity("good?").compound, compound_of(1.9));
        close(vader().polarity("good??").compound, compound_of(1.9 + 0.36));
        close(vader().polarity("bad????").compound, compound_of(-2.5 - 0.96));
    }

    #[test]
    fn no_least_and_special_phrases() {
        // "no" before a rated word negates it and has no valence of its own.
        close(vader().polarity("no good").compound, compound_of(1.9 * NEGATION));
        close(vader().polarity("no").compound, compound_of(-1.2));
        close(vader().polarity("the least good").compound, compound_of(1.9 * NEGATION));
        close(vader().polarity("at least good").compound, compound_of(1.9));
        close(vader().polarity("this is the bomb").compound, compound_of(3.0));
    }

    #[test]
    fn emoticons_and_emoji() {
        close(vader().polarity("thanks :)").compound, compound_of(2.0));
        close(vader().polarity("lunch😀").compound, compound_of(1.9));
        // Sequences of several code points are not described.
        assert_eq!(vader().polarity("👍🏽").compound, 0.0);
    }

    #[test]
    fn bad_lexicons_are_errors() {
        assert!(Vader::from_text("", None).is_err());
        assert!(Vader::from_text("good\tvery\n", None).unwrap_err().contains("line 1"));
        assert!(Vader::from_text("good\n", None).is_err());
        let missing = Vader::load(Path::new("/nonexistent/vader_lexicon.txt")).unwrap_err();
        assert!(matches!(missing, ModelError::MissingModelFile { .. }), "{missing}");
    }

    #[test]
    fn the_package_is_pinned() {
        assert_eq!(SENTIMENT_PACKAGE.sha256.len(), 64);
        assert!(SENTIMENT_PACKAGE.members.iter().any(|(_, file)| *file == "LICENSE.txt"));
        assert!(crate::packages::PACKAGES.contains(&SENTIMENT_PACKAGE));
    }
}
