//! Turns generated token bytes into the text pieces a stream sends: whole UTF-8 characters only
//! (a character split across byte-level tokens waits for its last byte), and nothing of a stop
//! string (text that could be the start of one waits until it is known not to be).

/// What one token's bytes produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Generation goes on; send this text if any.
    Continue(Option<String>),
    /// A stop string appeared; send this text (what came before it) if any, then stop.
    Stop(Option<String>),
}

/// The text not yet sent and the stop strings to watch for.
#[derive(Debug, Default)]
pub(crate) struct TextOutput {
    stops: Vec<String>,
    /// Bytes of an unfinished UTF-8 character.
    pending_bytes: Vec<u8>,
    /// Decoded text held back because it may begin a stop string.
    held: String,
}

impl TextOutput {
    /// Watches for `stops` (empty strings are ignored).
    pub(crate) fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|stop| !stop.is_empty()).cloned().collect(), ..Self::default() }
    }

    /// Adds one token's bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Step {
        self.pending_bytes.extend_from_slice(bytes);
        self.decode_complete_characters();

        let earliest_stop = self.stops.iter().filter_map(|stop| self.held.find(stop.as_str())).min();
        if let Some(at) = earliest_stop {
            let before = self.held[..at].to_owned();
            self.held.clear();
            self.pending_bytes.clear();
            return Step::Stop(non_empty(before));
        }

        let keep = self.longest_stop_prefix_suffix();
        let send = self.held.len() - keep;
        Step::Continue(non_empty(self.held.drain(..send).collect()))
    }

    /// The text still held back, at the end of generation. The bytes of an unfinished character
    /// are dropped.
    pub(crate) fn finish(&mut self) -> Option<String> {
        self.pending_bytes.clear();
        non_empty(std::mem::take(&mut self.held))
    }

    /// Moves every complete character from `pending_bytes` to `held`; an invalid byte sequence
    /// (not merely an unfinished one) becomes U+FFFD.
    fn decode_complete_characters(&mut self) {
        loop {
            match std::str::from_utf8(&self.pending_bytes) {
                Ok(text) => {
                    self.held.push_str(text);
                    self.pending_bytes.clear();
                    return;
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    self.held.push_str(&String::from_utf8_lossy(&self.pending_bytes[..valid]));
                    match error.error_len() {
                        // An unfinished character at the end: wait for its remaining bytes.
                        None => {
                            self.pending_bytes.drain(..valid);
                            return;
                        }
                        Some(invalid) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.pending_bytes.drain(..valid + invalid);
                        }
                    }
                }
            }
        }
    }

    /// The length of the longest end of `held` that is a proper beginning of some stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        self.stops
            .iter()
            .filter_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter(|length| stop.is_char_boundary(*length))
                    .find(|length| self.held.ends_with(&stop[..*length]))
            })
            .max()
            .unwrap_or(0)
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(step: Step) -> Option<String> {
        match step {
            Step::Continue(text) => text,
            Step::Stop(_) => panic!("unexpected stop"),
        }
    }

    #[test]
    fn plain_text_passes_straight_through() {
        let mut output = TextOutput::new(&[]);
        assert_eq!(text(output.push(b"Hello")), Some("Hello".to_owned()));
        assert_eq!(text(output.push(b" world")), Some(" world".to_owned()));
        assert_eq!(output.finish(), None);
    }

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let mut output = TextOutput::new(&[]);
        let emoji = "😀".as_bytes();
        assert_eq!(text(output.push(&emoji[..1])), None);
        assert_eq!(text(output.push(&emoji[1..3])), None);
        let mut last = emoji[3..].to_vec();
        last.extend_from_slice("é".as_bytes());
        assert_eq!(text(output.push(&last)), Some("😀é".to_owned()));
        // An unfinished character at the very end is dropped, not sent broken.
        assert_eq!(text(output.push(&"é".as_bytes()[..1])), None);
        assert_eq!(output.finish(), None);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut output = TextOutput::new(&[]);
        assert_eq!(text(output.push(b"a\xffb")), Some("a\u{FFFD}b".to_owned()));
        assert_eq!(text(output.push(b"\xc3")), None);
        assert_eq!(text(output.push(b"x")), Some("\u{FFFD}x".to_owned()));
    }

    #[test]
    fn stop_string_inside_one_token() {
        let mut output = TextOutput::new(&["STOP".to_owned()]);
        assert_eq!(output.push(b"abc STOP def"), Step::Stop(Some("abc ".to_owned())));
    }

    #[test]
    fn stop_string_split_across_tokens_never_leaks() {
        let mut output = TextOutput::new(&["\nUser:".to_owned()]);
        assert_eq!(text(output.push(b"Sure.")), Some("Sure.".to_owned()));
        assert_eq!(text(output.push(b"\n")), None);
        assert_eq!(text(output.push(b"Us")), None);
        assert_eq!(output.push(b"er: hi"), Step::Stop(None));
    }

    #[test]
    fn a_false_start_is_released() {
        let mut output = TextOutput::new(&["\nUser:".to_owned()]);
        assert_eq!(text(output.push(b"a\nU")), Some("a".to_owned()));
        assert_eq!(text(output.push(b"p")), Some("\nUp".to_owned()));
        assert_eq!(text(output.push(b"\nUse")), None);
        assert_eq!(output.finish(), Some("\nUse".to_owned()));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut output = TextOutput::new(&["xyz".to_owned(), "b".to_owned(), String::new()]);
        assert_eq!(output.push(b"a b xyz"), Step::Stop(Some("a ".to_owned())));
    }

    #[test]
    fn multibyte_stop_strings() {
        let mut output = TextOutput::new(&["終わり".to_owned()]);
        let bytes = "はい終わり".as_bytes();
        // "はい" and the first byte of "終": the unfinished character waits.
        assert_eq!(text(output.push(&bytes[..7])), Some("はい".to_owned()));
        // "終" may begin the stop string: held back.
        assert_eq!(text(output.push(&bytes[7..9])), None);
        assert_eq!(output.push(&bytes[9..]), Step::Stop(None));
    }
}
