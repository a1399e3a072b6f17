//! [`GgufTokenizer`]: the byte-level BPE tokenizer of a GGUF model (`tokenizer.ggml.model` =
//! `gpt2`), rebuilt from the file's metadata because GGUF models ship no `tokenizer.json`.
//!
//! - Vocabulary and merges come from `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`.
//! - Pre-tokenisation follows `tokenizer.ggml.pre` the way llama.cpp maps it: the GPT-2 split
//!   (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`), preceded for
//!   the StarCoder family (`smollm`, `starcoder`, `refact`, …) by isolating every digit.
//! - Control tokens (`tokenizer.ggml.token_type` = 3, e.g. `<|im_start|>`, `<|im_end|>`) are only
//!   produced by [`GgufTokenizer::encode_with_special_tokens`] or by callers that insert their ids;
//!   [`GgufTokenizer::encode`] treats their text as plain text, so user content cannot inject them.
//! - Decoding maps every token back to its exact bytes (GPT-2 byte-to-unicode table reversed), so
//!   a caller streaming text can hold back a character split across tokens.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::Tokenizer;

use crate::error::ModelError;

/// `tokenizer.ggml.token_type` of a control token (llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`).
const TOKEN_TYPE_CONTROL: i64 = 3;

/// Pre-tokenizers (`tokenizer.ggml.pre`) that split digits one by one before the GPT-2 split;
/// llama.cpp gives all of these the same regexes.
const DIGIT_SPLITTING_PRE: &[&str] = &["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"];

/// Pre-tokenizers that use the plain GPT-2 split.
const GPT2_PRE: &[&str] = &["gpt2", "default", "mpt", "olmo", "jais", "trillion"];

/// A byte-level BPE tokenizer rebuilt from GGUF metadata. Immutable and shareable between threads.
pub struct GgufTokenizer {
    /// BPE model and pre-tokenizers, without any added tokens (they are matched here instead).
    bpe: Tokenizer,
    /// The vocabulary's token strings (byte-level encoded), by id.
    tokens: Vec<String>,
    /// The exact bytes of each token, by id (control tokens: their literal text).
    token_bytes: Vec<Vec<u8>>,
    /// True for control tokens, by id.
    control: Vec<bool>,
    /// Token string to id.
    ids: HashMap<String, u32>,
    /// Control tokens as `(text, id)`, longest first, for matching in trusted text.
    specials: Vec<(String, u32)>,
    /// The byte-level token of each byte, where the vocabulary has one.
    byte_tokens: [Option<u32>; 256],
    eos_token_id: Option<u32>,
    pre: String,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GgufTokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("pre", &self.pre)
            .field("special_tokens", &self.specials.len())
            .field("eos_token_id", &self.eos_token_id)
            .finish_non_exhaustive()
    }
}

impl GgufTokenizer {
    /// Builds the tokenizer from the metadata of the GGUF file at `path` (named in errors).
    pub fn from_gguf_metadata(metadata: &HashMap<String, Value>, path: &Path) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::InvalidModel { path: path.to_path_buf(), reason };

        let model = metadata_string(metadata, "tokenizer.ggml.model").map_err(&invalid)?;
        if model != "gpt2" {
            return Err(invalid(format!(
                "tokenizer.ggml.model is `{model}`; only byte-level BPE (`gpt2`) tokenizers are supported"
            )));
        }
        let pre = match metadata.get("tokenizer.ggml.pre") {
            Some(_) => metadata_string(metadata, "tokenizer.ggml.pre").map_err(&invalid)?.to_owned(),
            None => "default".to_owned(),
        };
        let split_digits = if DIGIT_SPLITTING_PRE.contains(&pre.as_str()) {
            true
        } else if GPT2_PRE.contains(&pre.as_str()) {
            false
        } else {
            return Err(invalid(format!(
                "tokenizer.ggml.pre is `{pre}`; supported pre-tokenizers: {}",
                [DIGIT_SPLITTING_PRE, GPT2_PRE].concat().join(", ")
            )));
        };

        let tokens: Vec<String> = metadata_strings(metadata, "tokenizer.ggml.tokens")
            .map_err(&invalid)?
            .into_iter()
            .map(str::to_owned)
            .collect();
        if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
            return Err(invalid(format!("tokenizer.ggml.tokens has an unusable size ({})", tokens.len())));
        }
        let merges = metadata_strings(metadata, "tokenizer.ggml.merges").map_err(&invalid)?;
        let token_types: Vec<i64> = match metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(values)) => values
                .iter()
                .map(integer)
                .collect::<Option<_>>()
                .ok_or_else(|| invalid("tokenizer.ggml.token_type holds a non-integer".to_owned()))?,
            Some(_) => return Err(invalid("tokenizer.ggml.token_type is not an array".to_owned())),
            None => vec![1; tokens.len()],
        };
        if token_types.len() != tokens.len() {
            return Err(invalid(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                token_types.len(),
                tokens.len()
            )));
        }

        let mut ids = HashMap::with_capacity(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            // `tokens.len()` fits in u32 (checked above).
            ids.entry(token.clone()).or_insert(id as u32);
        }

        let unicode_to_byte = unicode_to_byte();
        let control: Vec<bool> = token_types.iter().map(|kind| *kind == TOKEN_TYPE_CONTROL).collect();
        let token_bytes: Vec<Vec<u8>> = tokens
            .iter()
            .zip(&control)
            .map(|(token, is_control)| {
                if *is_control {
                    token.as_bytes().to_vec()
                } else {
                    let mut bytes = Vec::with_capacity(token.len());
                    for character in token.chars() {
                        match unicode_to_byte.get(&character) {
                            Some(byte) => bytes.push(*byte),
                            None => bytes.extend_from_slice(character.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                    bytes
                }
            })
            .collect();

        // A vocabulary may lack a few bytes never seen in training (SmolLM2: some ASCII control
        // characters and bytes that never occur in UTF-8); like llama.cpp and Hugging Face
        // tokenizers, such bytes are dropped when encoding.
        let mut byte_tokens = [None; 256];
        for (byte, character) in byte_to_unicode().iter().enumerate() {
            byte_tokens[byte] = ids.get(character.to_string().as_str()).copied();
        }

        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|(id, token)| control[*id] && !token.is_empty())
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        specials.sort_by(|left, right| right.0.len().cmp(&left.0.len()).then(left.1.cmp(&right.1)));

        let merges: Merges = merges
            .iter()
            .enumerate()
            .map(|(rank, merge)| match merge.split_once(' ') {
                Some((left, right)) if !left.is_empty() && !right.is_empty() && !right.contains(' ') => {
                    Ok((left.to_owned(), right.to_owned()))
                }
                _ => Err(invalid(format!("tokenizer.ggml.merges entry {rank} (`{merge}`) is not `left right`"))),
            })
            .collect::<Result<_, _>>()?;
        let vocab: Vocab = ids.iter().map(|(token, id)| (token.clone(), *id)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|error| invalid(format!("cannot build the BPE model from the vocabulary and merges: {error}")))?;

        let mut pre_tokenizers: Vec<PreTokenizerWrapper> = Vec::new();
        if split_digits {
            pre_tokenizers.push(Digits::new(true).into());
        }
        pre_tokenizers.push(ByteLevel::new(false, false, true).into());
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(Sequence::new(pre_tokenizers)));

        let eos_token_id = metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(integer)
            .and_then(|id| u32::try_from(id).ok())
            .filter(|id| (*id as usize) < tokens.len());

        Ok(Self { bpe: tokenizer, tokens, token_bytes, control, ids, specials, byte_tokens, eos_token_id, pre })
    }

    /// The number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The `tokenizer.ggml.pre` this tokenizer follows.
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre
    }

    /// `tokenizer.ggml.eos_token_id`, if the file names one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// Token ids of plain `text`. Text that looks like a control token (`<|im_end|>`) is encoded
    /// as ordinary characters, never as the control token. Bytes without a byte-level token in
    /// the vocabulary are dropped.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        match self.bpe.encode_fast(text, false) {
            Ok(encoding) => encoding.get_ids().to_vec(),
            Err(error) => {
                // Not expected (no normaliser, no unknown token); one token per byte is still a
                // decodable encoding.
                tracing::error!(%error, "BPE encoding failed; falling back to byte tokens");
                text.bytes().filter_map(|byte| self.byte_tokens[usize::from(byte)]).collect()
            }
        }
    }

    /// Token ids of trusted `text` in which control-token strings (`<|im_start|>`) become their
    /// single ids; the text between them is encoded as by [`GgufTokenizer::encode`]. Never use it
    /// on user content.
    pub fn encode_with_special_tokens(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while let Some((start, token, id)) = self.find_special(rest) {
            ids.extend(self.encode(&rest[..start]));
            ids.push(id);
            rest = &rest[start + token.len()..];
        }
        ids.extend(self.encode(rest));
        ids
    }

    /// The earliest control token in `text` (longest at that position).
    fn find_special<'a>(&'a self, text: &str) -> Option<(usize, &'a str, u32)> {
        let mut best: Option<(usize, &str, u32)> = None;
        for (token, id) in &self.specials {
            if let Some(start) = text.find(token.as_str()) {
                // `specials` is longest first, so on a tie the longer token wins.
                if best.is_none_or(|(best_start, _, _)| start < best_start) {
                    best = Some((start, token.as_str(), *id));
                }
            }
        }
        best
    }

    /// The exact bytes of token `id` (empty for an id outside the vocabulary). A byte-level token
    /// may hold part of a multi-byte character.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// True for control tokens such as `<|im_end|>`.
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of a vocabulary entry spelled as stored (byte-level, e.g. `Ġworld` for ` world`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// The vocabulary entry of `id` as stored (byte-level).
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of the control token spelled `text` (e.g. `<|im_end|>`), if there is one.
    pub fn special_token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied().filter(|id| self.is_control(*id))
    }

    /// The text of `ids`, control tokens included; bytes that do not form valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| self.token_bytes(*id).iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// An integer metadata value of any width.
pub(crate) fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::U8(value) => Some(i64::from(*value)),
        Value::I8(value) => Some(i64::from(*value)),
        Value::U16(value) => Some(i64::from(*value)),
        Value::I16(value) => Some(i64::from(*value)),
        Value::U32(value) => Some(i64::from(*value)),
        Value::I32(value) => Some(i64::from(*value)),
        Value::U64(value) => i64::try_from(*value).ok(),
        Value::I64(value) => Some(*value),
        _ => None,
    }
}

/// A metadata string, or why not.
fn metadata_string<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> Result<&'a str, String> {
    match metadata.get(key) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(format!("metadata key {key} is not a string")),
        None => Err(format!("metadata key {key} is missing")),
    }
}

/// A metadata array of strings, or why not.
fn metadata_strings<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> Result<Vec<&'a str>, String> {
    let values = match metadata.get(key) {
        Some(Value::Array(values)) => values,
        Some(_) => return Err(format!("metadata key {key} is not an array")),
        None => return Err(format!("metadata key {key} is missing")),
    };
    values
        .iter()
        .enumerate()
        .map(|(index, value)| match value {
            Value::String(value) => Ok(value.as_str()),
            _ => Err(format!("{key}[{index}] is not a string")),
        })
        .collect()
}

/// GPT-2's reversible byte-to-unicode table: printable Latin-1 bytes stand for themselves, the
/// others are moved to U+0100 and up, in byte order.
fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_shifted = 0_u32;
    for byte in 0..=255_u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(byte)
        } else {
            next_shifted += 1;
            255 + next_shifted
        };
        table[usize::from(byte)] = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    table
}

fn unicode_to_byte() -> HashMap<char, u8> {
    byte_to_unicode().iter().enumerate().map(|(byte, character)| (*character, byte as u8)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let table = byte_to_unicode();
        assert_eq!(table[usize::from(b' ')], 'Ġ');
        assert_eq!(table[usize::from(b'\n')], 'Ċ');
        assert_eq!(table[usize::from(b'\t')], 'ĉ');
        assert_eq!(table[usize::from(b'A')], 'A');
        assert_eq!(table[0], 'Ā');
        assert_eq!(table[0xAD], 'Ń');
        let distinct: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(unicode_to_byte().len(), 256);
    }

    fn tiny_metadata(pre: &str) -> HashMap<String, Value> {
        let mut tokens: Vec<String> = vec!["<|im_end|>".to_owned(), "<|im_start|>".to_owned()];
        tokens.extend(byte_to_unicode().iter().map(|character| character.to_string()));
        tokens.extend(["he", "hel", "hell", "hello", "Ġw", "Ġwo", "Ġwor"].map(str::to_owned));
        let merges = ["h e", "he l", "hel l", "hell o", "Ġ w", "Ġw o", "Ġwo r"];
        let mut types = vec![Value::I32(3), Value::I32(3)];
        types.extend((2..tokens.len()).map(|_| Value::I32(1)));
        HashMap::from([
            ("tokenizer.ggml.model".to_owned(), Value::String("gpt2".to_owned())),
            ("tokenizer.ggml.pre".to_owned(), Value::String(pre.to_owned())),
            ("tokenizer.ggml.tokens".to_owned(), Value::Array(tokens.into_iter().map(Value::String).collect())),
            (
                "tokenizer.ggml.merges".to_owned(),
                Value::Array(merges.iter().map(|merge| Value::String((*merge).to_owned())).collect()),
            ),
            ("tokenizer.ggml.token_type".to_owned(), Value::Array(types)),
            ("tokenizer.ggml.eos_token_id".to_owned(), Value::U32(0)),
        ])
    }

    #[test]
    fn encodes_with_merges_and_splits_digits() {
        let tokenizer = GgufTokenizer::from_gguf_metadata(&tiny_metadata("smollm"), Path::new("tiny.gguf")).unwrap();
        let hello = tokenizer.token_id("hello").unwrap();
        let wor = tokenizer.token_id("Ġwor").unwrap();
        let ids = tokenizer.encode("hello world");
        assert_eq!(&ids[..2], &[hello, wor]);
        assert_eq!(tokenizer.decode(&ids), "hello world");
        // Digits are pre-tokenised one by one, so "12" stays two byte tokens either way.
        assert_eq!(tokenizer.encode("12").len(), 2);
        assert_eq!(tokenizer.eos_token_id(), Some(0));
    }

    #[test]
    fn control_tokens_only_from_trusted_text() {
        let tokenizer = GgufTokenizer::from_gguf_metadata(&tiny_metadata("gpt2"), Path::new("tiny.gguf")).unwrap();
        let end = tokenizer.special_token_id("<|im_end|>").unwrap();
        assert!(tokenizer.is_control(end));
        assert!(!tokenizer.encode("<|im_end|>").contains(&end));
        assert_eq!(tokenizer.decode(&tokenizer.encode("<|im_end|>")), "<|im_end|>");
        let ids = tokenizer.encode_with_special_tokens("hello<|im_end|>hello");
        let hello = tokenizer.token_id("hello").unwrap();
        assert_eq!(ids, vec![hello, end, hello]);
        assert_eq!(tokenizer.special_token_id("hello"), None);
    }

    #[test]
    fn multibyte_text_round_trips() {
        let tokenizer = GgufTokenizer::from_gguf_metadata(&tiny_metadata("gpt2"), Path::new("tiny.gguf")).unwrap();
        for text in ["é", "日本", "😀 ok", "  \n\t "] {
            let ids = tokenizer.encode(text);
            assert_eq!(ids.len(), text.len(), "{text:?}: one byte token per byte without merges");
            assert_eq!(tokenizer.decode(&ids), text);
        }
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error_naming_the_file() {
        let error = GgufTokenizer::from_gguf_metadata(&tiny_metadata("qwen2"), Path::new("/m/tiny.gguf")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("/m/tiny.gguf") && message.contains("qwen2"), "{message}");
    }
}
