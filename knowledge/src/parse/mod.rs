//! Document parsing: turns the bytes of an uploaded file (text, Markdown, HTML, PDF, DOCX, FAQ
//! as CSV or JSON) into a [`ParsedDocument`], a flat list of structural [`Block`]s that the
//! chunker follows.
//!
//! Owns: format detection, the parse limits, the one error type of parsing and the shared
//! helpers (text decoding, whitespace handling); each format lives in its own submodule.
//!
//! Must not touch: storage, indexing or chunking; a parser only reads bytes and returns blocks.

mod docx;
mod faq;
mod html;
mod markdown;
mod pdf;
mod text;

use std::borrow::Cow;

/// A supported input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Html,
    Pdf,
    Docx,
    FaqCsv,
    FaqJson,
}

impl Format {
    /// Every format, in the order of [`Format::as_str`]'s documentation, so that callers can list
    /// them (for example in an error message) without repeating the set.
    pub const ALL: [Format; 7] =
        [Format::Text, Format::Markdown, Format::Html, Format::Pdf, Format::Docx, Format::FaqCsv, Format::FaqJson];

    /// Picks the format from a file name's extension (txt, text, md, markdown, html, htm, pdf,
    /// docx, csv, json — case-insensitive), falling back to the content type (text/plain,
    /// text/markdown, text/html, application/pdf,
    /// application/vnd.openxmlformats-officedocument.wordprocessingml.document, text/csv,
    /// application/json). None if unsupported.
    pub fn detect(file_name: Option<&str>, content_type: Option<&str>) -> Option<Format> {
        file_name.and_then(Self::from_file_name).or_else(|| content_type.and_then(Self::from_content_type))
    }

    /// The extension decides; the name may carry a directory part (browsers on Windows once
    /// sent full paths), so only the last component counts.
    fn from_file_name(file_name: &str) -> Option<Format> {
        let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
        let (_, extension) = base.rsplit_once('.')?;
        match extension.trim().to_ascii_lowercase().as_str() {
            "txt" | "text" => Some(Format::Text),
            "md" | "markdown" => Some(Format::Markdown),
            "html" | "htm" => Some(Format::Html),
            "pdf" => Some(Format::Pdf),
            "docx" => Some(Format::Docx),
            "csv" => Some(Format::FaqCsv),
            "json" => Some(Format::FaqJson),
            _ => None,
        }
    }

    /// Parameters such as `; charset=utf-8` are ignored; the text decoder finds the encoding
    /// itself. A few common aliases are accepted because clients send them in practice.
    fn from_content_type(content_type: &str) -> Option<Format> {
        let essence = content_type.split(';').next().unwrap_or(content_type).trim().to_ascii_lowercase();
        match essence.as_str() {
            "text/plain" => Some(Format::Text),
            "text/markdown" | "text/x-markdown" => Some(Format::Markdown),
            "text/html" | "application/xhtml+xml" => Some(Format::Html),
            "application/pdf" => Some(Format::Pdf),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => Some(Format::Docx),
            "text/csv" => Some(Format::FaqCsv),
            "application/json" => Some(Format::FaqJson),
            _ => None,
        }
    }

    /// The stable name stored with a document and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::Pdf => "pdf",
            Format::Docx => "docx",
            Format::FaqCsv => "faq_csv",
            Format::FaqJson => "faq_json",
        }
    }

    /// The inverse of [`Format::as_str`].
    pub fn parse_name(name: &str) -> Option<Format> {
        Self::ALL.into_iter().find(|format| format.as_str() == name)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bounds on what a parser accepts, so that one upload cannot exhaust memory or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest accepted file, in bytes; also bounds what a DOCX may expand to.
    pub max_bytes: usize,
    /// Largest accepted number of PDF pages.
    pub max_pdf_pages: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits { max_bytes: 20 * 1024 * 1024, max_pdf_pages: 500 }
    }
}

/// What a block is, structurally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockKind {
    /// A heading; level 1 is the outermost.
    Heading {
        level: u8,
    },
    Paragraph,
    ListItem,
    /// A question and its answer; the answer is the block's text.
    Faq {
        question: String,
    },
}

/// One structural unit. For `Faq`, `text` is the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub kind: BlockKind,
    pub text: String,
}

impl Block {
    fn new(kind: BlockKind, text: impl Into<String>) -> Block {
        Block { kind, text: text.into() }
    }

    /// A block is worth keeping when it says something: FAQ entries need both halves.
    fn has_content(&self) -> bool {
        match &self.kind {
            BlockKind::Faq { question } => !question.trim().is_empty() && !self.text.trim().is_empty(),
            _ => !self.text.trim().is_empty(),
        }
    }
}

/// The result of parsing: an optional title and the blocks in reading order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedDocument {
    /// Title found in the content (first H1, `<title>`, DOCX Title style, PDF Info Title).
    pub title: Option<String>,
    pub blocks: Vec<Block>,
}

/// Why a file could not be parsed. Every message is meant for the person who uploaded it.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the PDF has {pages} pages, more than the limit of {limit}")]
    TooManyPages { pages: usize, limit: usize },
    #[error("the file holds binary data, not text")]
    Binary,
    #[error("the {format} file is corrupt or unreadable: {reason}")]
    Corrupt { format: &'static str, reason: String },
    #[error("invalid FAQ: {0}")]
    InvalidFaq(String),
}

impl ParseError {
    /// A stable, machine-readable code for the API's error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::Empty => "empty_document",
            ParseError::TooLarge { .. } => "document_too_large",
            ParseError::TooManyPages { .. } => "too_many_pages",
            ParseError::Binary => "binary_content",
            ParseError::Corrupt { .. } => "corrupt_document",
            ParseError::InvalidFaq(_) => "invalid_faq",
        }
    }

    fn corrupt(format: Format, reason: impl Into<String>) -> ParseError {
        ParseError::Corrupt { format: format.as_str(), reason: reason.into() }
    }
}

/// Parses `bytes` as `format`. The size limit is checked before anything else, so an oversized
/// upload costs no parsing work; a result without any text is [`ParseError::Empty`].
pub fn parse(bytes: &[u8], format: Format, limits: &ParseLimits) -> Result<ParsedDocument, ParseError> {
    if bytes.len() > limits.max_bytes {
        return Err(ParseError::TooLarge { limit: limits.max_bytes });
    }
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let document = match format {
        Format::Text => text::parse(&decode_text(bytes)?),
        Format::Markdown => markdown::parse(&decode_text(bytes)?),
        Format::Html => html::parse(&decode_text(bytes)?),
        Format::Pdf => pdf::parse(bytes, limits)?,
        Format::Docx => docx::parse(bytes, limits)?,
        Format::FaqCsv => faq::parse_csv(&decode_text(bytes)?)?,
        Format::FaqJson => faq::parse_json(&decode_text(bytes)?)?,
    };
    finish(document)
}

/// Plain text given through the API as `{"title","text"}`: paragraphs split at blank lines.
/// The title travels separately, so none is taken from the text.
pub fn parse_plain_text(text: &str) -> ParsedDocument {
    let mut document = text::parse(text);
    document.blocks.retain(Block::has_content);
    document.title = None;
    document
}

/// FAQ entries given through the API as JSON pairs. Entries missing a question or an answer
/// are left out, as they are in uploaded FAQ files.
pub fn faq_document(entries: &[(String, String)]) -> ParsedDocument {
    let blocks =
        entries.iter().map(|(question, answer)| faq::entry(question, answer)).filter(Block::has_content).collect();
    ParsedDocument { title: None, blocks }
}

/// Drops blocks without content and tidies the title; a document left with nothing to index is
/// an error rather than a silent success.
fn finish(mut document: ParsedDocument) -> Result<ParsedDocument, ParseError> {
    document.blocks.retain(Block::has_content);
    if document.blocks.is_empty() {
        return Err(ParseError::Empty);
    }
    document.title = document.title.map(|title| collapse_whitespace(&title)).filter(|title| !title.is_empty());
    Ok(document)
}

/// Decodes the bytes of a text-like format. UTF-8 (and UTF-16 when it carries a byte order
/// mark) is taken as it is; anything else that is not binary was most likely written on
/// Windows, so it is read as Windows-1252, which maps every byte to some character.
fn decode_text(bytes: &[u8]) -> Result<Cow<'_, str>, ParseError> {
    let text: Cow<'_, str> = if let Some((encoding, bom_length)) = encoding_rs::Encoding::for_bom(bytes) {
        let (decoded, _) = encoding.decode_without_bom_handling(&bytes[bom_length..]);
        decoded
    } else if bytes.contains(&0) {
        // NUL never occurs in real text without a UTF-16 byte order mark.
        return Err(ParseError::Binary);
    } else {
        match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) if mostly_utf8(bytes) => String::from_utf8_lossy(bytes),
            Err(_) => encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes).0,
        }
    };
    if looks_binary(&text) {
        return Err(ParseError::Binary);
    }
    if text.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(text)
}

/// Whether bytes that are not valid UTF-8 are still UTF-8 text with a few damaged bytes (a
/// truncated download, one pasted Latin-1 character): then the valid multi-byte sequences
/// outnumber the invalid bytes, and reading it all as Windows-1252 would garble every accent.
fn mostly_utf8(bytes: &[u8]) -> bool {
    let mut multi_byte = 0usize;
    let mut invalid = 0usize;
    for chunk in bytes.utf8_chunks() {
        multi_byte += chunk.valid().chars().filter(|c| !c.is_ascii()).count();
        invalid += chunk.invalid().len();
    }
    multi_byte > invalid
}

/// Text is binary when it holds NUL characters or when more than one character in twenty is
/// a control character other than the usual layout ones (tab, line feed, carriage return,
/// form feed); a stray escape character in a real text file stays well below that.
fn looks_binary(text: &str) -> bool {
    let mut total = 0usize;
    let mut control = 0usize;
    for c in text.chars() {
        if c == '\0' {
            return true;
        }
        total += 1;
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{0c}') {
            control += 1;
        }
    }
    control * 20 > total
}

/// Collapses every run of whitespace (including line breaks and non-breaking spaces) into one
/// space and trims the ends, which is how inline text reads once layout is gone.
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Splits text into paragraphs at blank lines; the lines of one paragraph are joined with
/// single spaces. Shared by plain text and PDF, whose extracted text has the same shape.
fn split_paragraphs(text: &str) -> Vec<String> {
    let mut paragraphs = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
            continue;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    paragraphs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_by_extension_then_content_type() {
        assert_eq!(Format::detect(Some("Notes.TXT"), None), Some(Format::Text));
        assert_eq!(Format::detect(Some("a.text"), None), Some(Format::Text));
        assert_eq!(Format::detect(Some("README.md"), None), Some(Format::Markdown));
        assert_eq!(Format::detect(Some("guide.Markdown"), None), Some(Format::Markdown));
        assert_eq!(Format::detect(Some("page.htm"), Some("application/pdf")), Some(Format::Html));
        assert_eq!(Format::detect(Some("C:\\docs\\report.PDF"), None), Some(Format::Pdf));
        assert_eq!(Format::detect(Some("dir/letter.docx"), None), Some(Format::Docx));
        assert_eq!(Format::detect(Some("faq.csv"), None), Some(Format::FaqCsv));
        assert_eq!(Format::detect(Some("faq.json"), None), Some(Format::FaqJson));
        assert_eq!(Format::detect(Some("upload"), Some("text/html; charset=utf-8")), Some(Format::Html));
        assert_eq!(Format::detect(Some("x.bin"), Some("Text/Plain")), Some(Format::Text));
        assert_eq!(Format::detect(None, Some("text/markdown")), Some(Format::Markdown));
        assert_eq!(
            Format::detect(None, Some("application/vnd.openxmlformats-officedocument.wordprocessingml.document")),
            Some(Format::Docx)
        );
        assert_eq!(Format::detect(None, Some("text/csv")), Some(Format::FaqCsv));
        assert_eq!(Format::detect(None, Some("application/json")), Some(Format::FaqJson));
        assert_eq!(Format::detect(None, Some("application/pdf")), Some(Format::Pdf));
        assert_eq!(Format::detect(Some("image.png"), Some("image/png")), None);
        assert_eq!(Format::detect(None, None), None);
    }

    #[test]
    fn format_names_round_trip() {
        for format in Format::ALL {
            assert_eq!(Format::parse_name(format.as_str()), Some(format));
        }
        assert_eq!(Format::FaqCsv.as_str(), "faq_csv");
        assert_eq!(Format::parse_name("word"), None);
    }

    #[test]
    fn error_codes_are_stable() {
        assert_eq!(ParseError::Empty.code(), "empty_document");
        assert_eq!(ParseError::TooLarge { limit: 1 }.code(), "document_too_large");
        assert_eq!(ParseError::TooManyPages { pages: 2, limit: 1 }.code(), "too_many_pages");
        assert_eq!(ParseError::Binary.code(), "binary_content");
        assert_eq!(ParseError::Corrupt { format: "pdf", reason: "x".into() }.code(), "corrupt_document");
        assert_eq!(ParseError::InvalidFaq("x".into()).code(), "invalid_faq");
        assert_eq!(ParseError::Empty.to_string(), "the file is empty");
    }

    #[test]
    fn over_the_limit_input_is_rejected_before_parsing() {
        let limits = ParseLimits { max_bytes: 10, max_pdf_pages: 5 };
        // Garbage that would be corrupt as a PDF must still report the size first.
        let bytes = vec![0xFFu8; 11];
        for format in Format::ALL {
            let error = parse(&bytes, format, &limits).unwrap_err();
            assert!(matches!(error, ParseError::TooLarge { limit: 10 }), "{format}: {error:?}");
        }
        assert!(parse(b"ten bytes!", Format::Text, &limits).is_ok());
    }

    #[test]
    fn empty_and_blank_files_are_empty() {
        let limits = ParseLimits::default();
        for format in Format::ALL {
            assert!(matches!(parse(b"", format, &limits), Err(ParseError::Empty)), "{format}");
        }
        for format in [Format::Text, Format::Markdown, Format::Html, Format::FaqCsv, Format::FaqJson] {
            assert!(matches!(parse(b"  \n\r\n\t ", format, &limits), Err(ParseError::Empty)), "{format}");
        }
        assert!(matches!(parse(b"<html><body>  </body></html>", Format::Html, &limits), Err(ParseError::Empty)));
    }

    #[test]
    fn binary_bytes_are_not_text() {
        let limits = ParseLimits::default();
        let mut bytes = b"PK\x03\x04".to_vec();
        bytes.extend((0u8..=255).cycle().take(2048));
        for format in [Format::Text, Format::Markdown, Format::Html, Format::FaqCsv, Format::FaqJson] {
            assert!(matches!(parse(&bytes, format, &limits), Err(ParseError::Binary)), "{format}");
        }
        // Control characters without NULs are binary too once they are frequent.
        let noisy: Vec<u8> = (1u8..32).filter(|b| !b"\t\n\r\x0c".contains(b)).cycle().take(500).collect();
        assert!(matches!(parse(&noisy, Format::Text, &limits), Err(ParseError::Binary)));
        // A lone escape character in real text is not.
        assert!(parse(b"colour \x1b[1mbold\x1b[0m text that is long enough to count", Format::Text, &limits).is_ok());
    }

    #[test]
    fn windows_1252_and_utf16_are_decoded() {
        let limits = ParseLimits::default();
        let document = parse(b"caf\xe9 cr\xe8me \x80 5", Format::Text, &limits).unwrap();
        assert_eq!(document.blocks[0].text, "café crème € 5");

        let mut utf16 = vec![0xFF, 0xFE];
        for unit in "naïve text".encode_utf16() {
            utf16.extend(unit.to_le_bytes());
        }
        let document = parse(&utf16, Format::Text, &limits).unwrap();
        assert_eq!(document.blocks[0].text, "naïve text");

        // UTF-8 with one damaged byte stays UTF-8; only the damaged byte is replaced.
        let document = parse(b"na\xc3\xafve caf\xc3\xa9 \xff end", Format::Text, &limits).unwrap();
        assert_eq!(document.blocks[0].text, "naïve café \u{fffd} end");

        let document = parse("\u{feff}with a BOM".as_bytes(), Format::Text, &limits).unwrap();
        assert_eq!(document.blocks[0].text, "with a BOM");
    }

    #[test]
    fn plain_text_and_faq_documents_from_the_api() {
        let document = parse_plain_text("# Not a heading\nsecond line\n\n\n  Next paragraph  \n \n");
        assert_eq!(document.title, None);
        assert_eq!(
            document.blocks,
            vec![
                Block::new(BlockKind::Paragraph, "# Not a heading second line"),
                Block::new(BlockKind::Paragraph, "Next paragraph"),
            ]
        );
        assert!(parse_plain_text(" \n ").blocks.is_empty());

        let document = faq_document(&[
            ("  How do I reset?  ".to_string(), "Press the button.\n".to_string()),
            ("".to_string(), "orphan answer".to_string()),
            ("No answer?".to_string(), " ".to_string()),
        ]);
        assert_eq!(
            document.blocks,
            vec![Block::new(BlockKind::Faq { question: "How do I reset?".into() }, "Press the button.")]
        );
    }
}
