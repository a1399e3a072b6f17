//! Text on its way to and from speech: an answer split into sentences as it streams, cleaned
//! for the voice; a caller's transcript checked for backchannels and for the agent's own words.

/// A sentence longer than this is cut at its last comma or space, so synthesis starts early.
const MAX_SENTENCE_CHARS: usize = 240;
/// An answer's first piece may end at a clause (`,` `;` `:`) once it has this many words, so
/// the agent starts speaking before the first sentence is written to its end.
const FIRST_CLAUSE_WORDS: usize = 4;
/// Abbreviations whose full stop ends no sentence.
const ABBREVIATIONS: &[&str] =
    &["mr", "mrs", "ms", "dr", "prof", "st", "e.g", "i.e", "vs", "no", "approx", "inc", "ltd"];

/// Splits streamed text into sentences as soon as each is complete.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buffer: String,
    /// The next piece may end at a clause of at least [`FIRST_CLAUSE_WORDS`] words.
    clause_first: bool,
}

impl SentenceSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A splitter for an answer being written: its first piece ends at the first clause of
    /// [`FIRST_CLAUSE_WORDS`] words or more if that comes before the end of the sentence.
    pub fn answer() -> Self {
        Self { buffer: String::new(), clause_first: true }
    }

    /// Adds a piece of the answer; returns the sentences it completes, in order.
    pub fn push(&mut self, piece: &str) -> Vec<String> {
        self.buffer.push_str(piece);
        let mut sentences = Vec::new();
        while let Some(end) = self.piece_end() {
            self.clause_first = false;
            let rest = self.buffer.split_off(end);
            let sentence = std::mem::replace(&mut self.buffer, rest);
            let sentence = sentence.trim();
            if !sentence.is_empty() {
                sentences.push(sentence.to_owned());
            }
        }
        sentences
    }

    /// Where the next piece ends: the end of the sentence, or of the first clause when that
    /// comes first and may end a piece.
    fn piece_end(&self) -> Option<usize> {
        let sentence = sentence_end(&self.buffer);
        if !self.clause_first {
            return sentence;
        }
        match (sentence, clause_end(&self.buffer)) {
            (Some(sentence), Some(clause)) => Some(sentence.min(clause)),
            (sentence, clause) => sentence.or(clause),
        }
    }

    /// The rest of the answer, once it is complete.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_owned())
    }
}

/// The byte index just past the first complete sentence of `text`, if any: a `.`, `!`, `?` or
/// `…` (with any closing quotes or brackets) followed by white space, a line break, or a cut
/// of an overlong sentence at its last comma or space.
fn sentence_end(text: &str) -> Option<usize> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (position, &(index, character)) in chars.iter().enumerate() {
        if character == '\n' {
            return Some(index + 1);
        }
        if !matches!(character, '.' | '!' | '?' | '…') {
            continue;
        }
        let mut next = position + 1;
        while next < chars.len() && matches!(chars[next].1, '"' | '\'' | ')' | ']' | '”' | '’') {
            next += 1;
        }
        // The sentence is complete only once what follows is known to be white space.
        let &(after, following) = chars.get(next)?;
        if !following.is_whitespace() {
            continue;
        }
        if character == '.' && is_abbreviation(&text[..index]) {
            continue;
        }
        return Some(after);
    }
    if text.chars().count() > MAX_SENTENCE_CHARS {
        let cut: usize = text.char_indices().nth(MAX_SENTENCE_CHARS).map_or(text.len(), |(index, _)| index);
        let head = &text[..cut];
        let at = head.rfind(", ").map(|index| index + 2).or_else(|| head.rfind(' ').map(|index| index + 1));
        return Some(at.filter(|at| *at > 0).unwrap_or(cut));
    }
    None
}

/// The byte index just past the first clause of `text` with at least [`FIRST_CLAUSE_WORDS`]
/// words: a `,`, `;` or `:` followed by white space (so not `3,000` or `9:30`).
fn clause_end(text: &str) -> Option<usize> {
    let mut chars = text.char_indices().peekable();
    while let Some((index, character)) = chars.next() {
        if !matches!(character, ',' | ';' | ':') {
            continue;
        }
        let &(after, following) = chars.peek()?;
        if following.is_whitespace() && text[..index].split_whitespace().count() >= FIRST_CLAUSE_WORDS {
            return Some(after);
        }
    }
    None
}

/// True when the word before a full stop is a known abbreviation or a single letter (an
/// initial).
fn is_abbreviation(before: &str) -> bool {
    let word = before.rsplit(|c: char| c.is_whitespace() || c == '(').next().unwrap_or_default().to_lowercase();
    let word = word.trim_start_matches(['"', '\'']);
    (word.chars().count() == 1 && word.chars().all(char::is_alphabetic)) || ABBREVIATIONS.contains(&word)
}

/// A sentence as the voice should say it: citation markers (`[2]`), markdown emphasis,
/// headings and code marks removed, white space collapsed.
pub fn speakable(sentence: &str) -> String {
    let mut out = String::with_capacity(sentence.len());
    let mut chars = sentence.chars().peekable();
    while let Some(character) = chars.next() {
        if character == '[' {
            let mut inner = String::new();
            let mut closed = false;
            for next in chars.by_ref() {
                if next == ']' {
                    closed = true;
                    break;
                }
                inner.push(next);
            }
            let marker =
                closed && !inner.is_empty() && inner.chars().all(|c| c.is_ascii_digit() || c == ',' || c == ' ');
            if !marker {
                out.push('[');
                out.push_str(&inner);
                if closed {
                    out.push(']');
                }
            }
            continue;
        }
        if matches!(character, '*' | '_' | '#' | '`' | '>' | '|') {
            out.push(' ');
            continue;
        }
        out.push(character);
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A transcript without what whisper writes for non-speech (`[BLANK_AUDIO]`, `(music)`),
/// trimmed; empty when nothing was said.
pub fn spoken_text(transcript: &str) -> String {
    let mut out = String::with_capacity(transcript.len());
    let mut depth = 0_usize;
    for character in transcript.chars() {
        match character {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(character),
            _ => {}
        }
    }
    let text = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if words(&text).is_empty() {
        String::new()
    } else {
        text
    }
}

/// The words of `text`, lowercased, punctuation dropped; hyphenated words split.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == '-' || c == '—' || c == '–')
        .map(|word| word.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>().to_lowercase())
        .map(|word| word.trim_matches('\'').to_owned())
        .filter(|word| !word.is_empty())
        .collect()
}

/// True when the transcript says nothing but backchannel phrases ("okay", "uh-huh, yeah"):
/// the caller acknowledges the agent without taking the turn.
pub fn is_backchannel(transcript: &str, phrases: &[String]) -> bool {
    let said = words(transcript);
    if said.is_empty() || said.len() > 6 {
        return false;
    }
    let phrases: Vec<Vec<String>> = phrases.iter().map(|phrase| words(phrase)).filter(|w| !w.is_empty()).collect();
    let mut rest = &said[..];
    'outer: while !rest.is_empty() {
        for phrase in &phrases {
            if rest.len() >= phrase.len() && rest[..phrase.len()] == phrase[..] {
                rest = &rest[phrase.len()..];
                continue 'outer;
            }
            // "uh huh" and "uhhuh" are transcribed for "uh-huh".
            let joined: String = phrase.concat();
            if rest[0] == joined {
                rest = &rest[1..];
                continue 'outer;
            }
        }
        return false;
    }
    true
}

/// True when a caller transcript of at least two words only repeats what the agent just said
/// (its own audio heard back): at least 80% of its words are among the agent's recent words,
/// and its first two words appear next to each other in them.
pub fn repeats_agent(transcript: &str, agent_said: &str) -> bool {
    let said = words(transcript);
    if said.len() < 2 {
        return false;
    }
    let agent = words(agent_said);
    if agent.is_empty() {
        return false;
    }
    let known = said.iter().filter(|word| agent.contains(word)).count();
    let adjacent = agent.windows(2).any(|pair| pair[0] == said[0] && pair[1] == said[1]);
    adjacent && known * 5 >= said.len() * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&str]) -> Vec<String> {
        let mut splitter = SentenceSplitter::new();
        let mut sentences: Vec<String> = pieces.iter().flat_map(|piece| splitter.push(piece)).collect();
        sentences.extend(splitter.finish());
        sentences
    }

    #[test]
    fn streamed_text_splits_at_sentence_ends_as_soon_as_they_are_known() {
        let mut splitter = SentenceSplitter::new();
        assert!(splitter.push("Hello there").is_empty());
        assert!(splitter.push(".").is_empty(), "the full stop may still be part of a number");
        assert_eq!(splitter.push(" How"), vec!["Hello there.".to_owned()]);
        assert_eq!(splitter.push(" are you? I"), vec!["How are you?".to_owned()]);
        assert!(splitter.push(" am fine").is_empty());
        assert_eq!(splitter.finish().as_deref(), Some("I am fine"));
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn an_answers_first_piece_may_end_at_a_clause() {
        let mut splitter = SentenceSplitter::answer();
        assert!(splitter.push("No, you can").is_empty(), "one word is too short a clause");
        assert_eq!(splitter.push("not. The fine is"), vec!["No, you cannot.".to_owned()]);
        let mut splitter = SentenceSplitter::answer();
        assert!(splitter.push("It costs 3,000 dollars at 9:30").is_empty(), "no clause without a space after");
        assert!(splitter.push(" in the shop,").is_empty(), "what follows the comma is not known yet");
        assert_eq!(
            splitter.push(" and more, or less. Then"),
            vec!["It costs 3,000 dollars at 9:30 in the shop,".to_owned(), "and more, or less.".to_owned(),]
        );
        assert_eq!(splitter.finish().as_deref(), Some("Then"));
        // Only the first piece: disclosures and greetings keep whole sentences.
        assert_eq!(split(&["Hello there, and welcome to the library. Ask away."]).len(), 2);
    }

    #[test]
    fn numbers_abbreviations_and_initials_do_not_end_sentences() {
        assert_eq!(
            split(&["It costs 3.50 dollars, e.g. in ", "the shop of Dr. Smith and J. Doe. Next!"]),
            vec!["It costs 3.50 dollars, e.g. in the shop of Dr. Smith and J. Doe.", "Next!"]
        );
    }

    #[test]
    fn quotes_lines_and_overlong_sentences_are_split() {
        assert_eq!(split(&["He said \"go.\" Then\nleft"]), vec!["He said \"go.\"", "Then", "left"]);
        let long = "word, ".repeat(60);
        let sentences = split(&[&long]);
        assert!(sentences.len() >= 2, "{sentences:?}");
        assert!(sentences.iter().all(|sentence| sentence.chars().count() <= MAX_SENTENCE_CHARS));
        assert_eq!(sentences.join(" ").matches("word").count(), 60);
    }

    #[test]
    fn speakable_text_drops_markers_and_markdown() {
        assert_eq!(speakable("**Opening hours** are 9 to 5 [1][2, 3]."), "Opening hours are 9 to 5 .");
        assert_eq!(speakable("See [the guide] and `code`"), "See [the guide] and code");
        assert_eq!(speakable("## Title"), "Title");
    }

    #[test]
    fn whisper_non_speech_marks_are_not_speech() {
        assert_eq!(spoken_text(" [BLANK_AUDIO]"), "");
        assert_eq!(spoken_text("(music) "), "");
        assert_eq!(spoken_text(" Hello (coughs) there."), "Hello there.");
        assert_eq!(spoken_text(" ... "), "");
    }

    #[test]
    fn backchannels_are_recognised_and_questions_are_not() {
        let phrases: Vec<String> =
            ["uh-huh", "yeah", "okay", "mm-hmm", "right"].iter().map(|phrase| (*phrase).to_owned()).collect();
        for said in ["Okay.", " okay", "Uh-huh.", "Uh huh", "Uhhuh", "Yeah, right.", "Mm-hmm", "OK okay"] {
            let expected = said != "OK okay";
            assert_eq!(is_backchannel(said, &phrases), expected, "{said:?}");
        }
        for said in ["Okay, what are your opening hours?", "Right now please", "", "No."] {
            assert!(!is_backchannel(said, &phrases), "{said:?}");
        }
        assert!(is_backchannel("Sure.", &["sure".to_owned()]), "the phrases are configurable");
    }

    #[test]
    fn the_agents_own_words_heard_back_are_recognised() {
        let agent = "I'm sorry, I don't know that. I can only answer from this site's documents.";
        assert!(repeats_agent("I can only answer from this site's documents.", agent));
        assert!(repeats_agent("I don't know that.", agent));
        assert!(!repeats_agent("What are your opening hours?", agent));
        assert!(!repeats_agent("I know that you can answer.", agent), "no run of the agent's words");
        assert!(!repeats_agent("Sorry.", agent), "one word is too little to tell");
        assert!(!repeats_agent("I can only answer from this site's documents.", ""));
    }
}
