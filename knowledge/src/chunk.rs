//! Structure-following chunking: renders a [`ParsedDocument`] into its canonical text and cuts
//! that text into chunks that follow the document's sections, so that each chunk is about one
//! thing and says (through its heading and section path) what that thing is.
//!
//! Owns: the canonical text format (which chunk offsets and citations point into) and the
//! packing and splitting rules. Offsets are in characters, not bytes, so that they mean the
//! same thing in every language the API is called from.

use crate::parse::{BlockKind, ParsedDocument};

/// Separates blocks in the canonical text.
const BLOCK_SEPARATOR: &str = "\n\n";

/// How large chunks may be and how much consecutive pieces of one long block share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSettings {
    /// Largest chunk, in characters.
    pub max_chars: usize,
    /// Characters a piece of a split block repeats from the end of the piece before it, so a
    /// sentence cut at a piece boundary is still found whole in one of them.
    pub overlap_chars: usize,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        ChunkSettings { max_chars: 1200, overlap_chars: 200 }
    }
}

/// One chunk of a document's canonical text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// 0-based position in the document.
    pub ordinal: u32,
    /// Exactly `canonical_text.chars().skip(start).take(end - start)`.
    pub text: String,
    /// Heading texts enclosing this chunk, outermost first; for FAQ chunks, `vec![question]`.
    pub section_path: Vec<String>,
    /// Offset in characters (not bytes) into the canonical text.
    pub start: usize,
    pub end: usize,
}

/// The document's canonical text (what offsets point into) and its chunks.
///
/// Blocks are rendered in order and separated by a blank line: headings and paragraphs as their
/// text, list items as `- text`, FAQ entries as `Q: question\nA: answer`. A heading starts a new
/// section and a chunk never spans two sections; the heading's text opens the first chunk of
/// its section. A heading directly followed by a deeper heading (a chapter title right before
/// its first subsection) has no text of its own and shares the subsection's first chunk, whose
/// section path is the subsection's. Consecutive blocks of a section are packed into chunks of
/// at most `max_chars`; a FAQ entry is always a chunk of its own; a block too long for one chunk
/// is split at paragraph or sentence boundaries, else at word boundaries, else anywhere, with
/// up to `overlap_chars` (and at most half a piece) of overlap starting at a word boundary.
/// `max_chars` below 1 is treated as 1.
pub fn chunk_document(document: &ParsedDocument, settings: &ChunkSettings) -> (String, Vec<Chunk>) {
    let (canonical, blocks) = render(document);
    let chars: Vec<char> = canonical.chars().collect();
    let mut chunker = Chunker {
        chars: &chars,
        max_chars: settings.max_chars.max(1),
        overlap_chars: settings.overlap_chars,
        chunks: Vec::new(),
    };
    let mut headings: Vec<(u8, String)> = Vec::new();
    let mut pending: Option<Pending> = None;
    for block in &blocks {
        match &block.kind {
            BlockKind::Heading { level } => {
                while headings.last().is_some_and(|(open, _)| *open >= *level) {
                    headings.pop();
                }
                headings.push((*level, block.heading_text.clone()));
                let path = section_path(&headings);
                pending = match pending.take() {
                    // Nothing has been said under the previous heading yet, and this one is
                    // nested in it: both introduce what follows.
                    Some(open) if open.only_headings && *level > open.heading_level => {
                        Some(Pending { end: block.end, heading_level: *level, path, ..open })
                    }
                    other => {
                        if let Some(open) = other {
                            chunker.emit(open.start, open.end, &open.path);
                        }
                        Some(Pending {
                            start: block.start,
                            end: block.end,
                            only_headings: true,
                            heading_level: *level,
                            path,
                        })
                    }
                };
            }
            BlockKind::Paragraph | BlockKind::ListItem => {
                pending = match pending.take() {
                    None => Some(Pending {
                        start: block.start,
                        end: block.end,
                        only_headings: false,
                        heading_level: 0,
                        path: section_path(&headings),
                    }),
                    Some(open) if block.end - open.start <= chunker.max_chars => {
                        Some(Pending { end: block.end, only_headings: false, ..open })
                    }
                    // The heading must open its section's first chunk, so it is split together
                    // with the block that does not fit beside it.
                    Some(open) if open.only_headings => {
                        chunker.emit(open.start, block.end, &open.path);
                        None
                    }
                    Some(open) => {
                        chunker.emit(open.start, open.end, &open.path);
                        Some(Pending {
                            start: block.start,
                            end: block.end,
                            only_headings: false,
                            heading_level: 0,
                            path: open.path,
                        })
                    }
                };
            }
            BlockKind::Faq { question } => {
                if let Some(open) = pending.take() {
                    chunker.emit(open.start, open.end, &open.path);
                }
                chunker.emit(block.start, block.end, &[question.trim().to_string()]);
            }
        }
    }
    if let Some(open) = pending {
        chunker.emit(open.start, open.end, &open.path);
    }
    (canonical, chunker.chunks)
}

/// One block's place in the canonical text, in characters.
#[derive(Debug)]
struct RenderedBlock {
    kind: BlockKind,
    start: usize,
    end: usize,
    /// The heading's text, as it goes into section paths (empty for other blocks).
    heading_text: String,
}

/// Renders the blocks into the canonical text. Text is trimmed so that every block starts and
/// ends with a visible character; blocks with nothing to show are left out.
fn render(document: &ParsedDocument) -> (String, Vec<RenderedBlock>) {
    let mut canonical = String::new();
    let mut length = 0usize;
    let mut blocks = Vec::new();
    for block in &document.blocks {
        let text = block.text.trim();
        let (rendered, heading_text) = match &block.kind {
            BlockKind::Heading { .. } => (text.to_string(), text.to_string()),
            BlockKind::Paragraph => (text.to_string(), String::new()),
            BlockKind::ListItem if text.is_empty() => (String::new(), String::new()),
            BlockKind::ListItem => (format!("- {text}"), String::new()),
            BlockKind::Faq { question } if question.trim().is_empty() && text.is_empty() => {
                (String::new(), String::new())
            }
            BlockKind::Faq { question } => {
                (format!("Q: {}\nA: {}", question.trim(), text).trim_end().to_string(), String::new())
            }
        };
        if rendered.is_empty() {
            continue;
        }
        if !canonical.is_empty() {
            canonical.push_str(BLOCK_SEPARATOR);
            length += BLOCK_SEPARATOR.chars().count();
        }
        let start = length;
        length += rendered.chars().count();
        canonical.push_str(&rendered);
        blocks.push(RenderedBlock { kind: block.kind.clone(), start, end: length, heading_text });
    }
    (canonical, blocks)
}

fn section_path(headings: &[(u8, String)]) -> Vec<String> {
    headings.iter().map(|(_, text)| text.clone()).collect()
}

/// Blocks gathered for the next chunk: a contiguous range of the canonical text.
#[derive(Debug)]
struct Pending {
    start: usize,
    end: usize,
    /// True while the range holds only headings, which must not become a chunk on their own
    /// if body text follows.
    only_headings: bool,
    /// The level of the last heading in the range (0 when there is none).
    heading_level: u8,
    path: Vec<String>,
}

/// Where a split may fall, from most to least preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boundary {
    /// Between paragraphs (a blank line).
    Paragraph,
    /// After a sentence's final punctuation.
    Sentence,
    /// At a line break.
    Line,
    /// Between words.
    Word,
}

struct Chunker<'a> {
    chars: &'a [char],
    max_chars: usize,
    overlap_chars: usize,
    chunks: Vec<Chunk>,
}

impl Chunker<'_> {
    /// Emits the range `[start, end)` as one chunk if it fits, else as several pieces.
    fn emit(&mut self, start: usize, end: usize, path: &[String]) {
        let mut position = start;
        // Each cut lies beyond the previous one, so the pieces always advance.
        let mut previous_cut = start;
        let mut previous_end = start;
        loop {
            while position < end && self.chars[position].is_whitespace() {
                position += 1;
            }
            if position >= end {
                return;
            }
            if end - position <= self.max_chars {
                self.push(position, end, path, previous_end);
                return;
            }
            let (cut, hard) = self.find_cut(position, previous_cut);
            previous_end = self.push(position, cut, path, previous_end);
            position = self.next_start(position, cut, hard);
            previous_cut = cut;
        }
    }

    /// Adds a chunk for `[start, end)` without the whitespace at its end, unless the previous
    /// piece (ending at `previous_end`) already holds all of it. Returns the end of the last
    /// piece emitted.
    fn push(&mut self, start: usize, end: usize, path: &[String], previous_end: usize) -> usize {
        let mut end = end;
        while end > start && self.chars[end - 1].is_whitespace() {
            end -= 1;
        }
        if end == start || end <= previous_end {
            return previous_end;
        }
        self.chunks.push(Chunk {
            ordinal: u32::try_from(self.chunks.len()).unwrap_or(u32::MAX),
            text: self.chars[start..end].iter().collect(),
            section_path: path.to_vec(),
            start,
            end,
        });
        end
    }

    /// Where to end the piece that starts at `position`, which is followed by more than
    /// `max_chars` of text; the cut lies beyond `previous_cut`. The best boundary kind found in
    /// the second half of the allowed length wins, so pieces stay reasonably full; words may end
    /// a shorter piece; without any boundary the cut is hard (`true`).
    fn find_cut(&self, position: usize, previous_cut: usize) -> (usize, bool) {
        let limit = position + self.max_chars;
        let floor = (position + 1).max(previous_cut + 1);
        let half = (position + self.max_chars / 2).max(floor);
        for boundary in [Boundary::Paragraph, Boundary::Sentence, Boundary::Line, Boundary::Word] {
            if let Some(cut) = (half..=limit).rev().find(|&cut| self.is_boundary(cut, boundary)) {
                return (cut, false);
            }
        }
        match (floor..half).rev().find(|&cut| self.is_boundary(cut, Boundary::Word)) {
            Some(cut) => (cut, false),
            None => (limit, true),
        }
    }

    /// Whether a piece may end just before `cut` (which is always inside the text). The
    /// character before the cut is never whitespace, so the piece ends exactly there.
    fn is_boundary(&self, cut: usize, boundary: Boundary) -> bool {
        let chars = self.chars;
        let here = chars[cut];
        if chars.get(cut.wrapping_sub(1)).is_none_or(|before| before.is_whitespace()) {
            return false;
        }
        match boundary {
            Boundary::Paragraph => here == '\n' && chars.get(cut + 1) == Some(&'\n'),
            Boundary::Sentence => {
                let Some(&before) = chars.get(cut.wrapping_sub(1)) else { return false };
                if is_wide_terminal(before) {
                    return true;
                }
                if !here.is_whitespace() {
                    return false;
                }
                // Closing quotes and brackets may follow the full stop: `He said "no."`.
                let terminal = if is_closing(before) { chars.get(cut.wrapping_sub(2)).copied() } else { Some(before) };
                terminal.is_some_and(is_terminal)
            }
            Boundary::Line => here == '\n',
            Boundary::Word => here.is_whitespace(),
        }
    }

    /// Where the piece after one ending at `cut` starts: up to `overlap_chars` earlier (and at
    /// most half the previous piece, so pieces always advance), at the first word start in
    /// that window. Text without spaces (a hard cut) overlaps by characters instead.
    fn next_start(&self, position: usize, cut: usize, hard: bool) -> usize {
        let overlap = self.overlap_chars.min((cut - position) / 2);
        if overlap == 0 {
            return cut;
        }
        let window = cut - overlap;
        let word_start =
            (window..cut).find(|&at| !self.chars[at].is_whitespace() && self.chars[at - 1].is_whitespace());
        match word_start {
            Some(at) => at,
            None if hard => window,
            None => cut,
        }
    }
}

fn is_terminal(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…' | ';' | ':')
}

/// Full-width sentence ends (Chinese, Japanese), which are not followed by a space.
fn is_wide_terminal(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '．')
}

fn is_closing(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '”' | '’' | '»' | '」' | '』')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{faq_document, parse_plain_text, Block};

    fn heading(level: u8, text: &str) -> Block {
        Block { kind: BlockKind::Heading { level }, text: text.to_string() }
    }

    fn paragraph(text: &str) -> Block {
        Block { kind: BlockKind::Paragraph, text: text.to_string() }
    }

    fn item(text: &str) -> Block {
        Block { kind: BlockKind::ListItem, text: text.to_string() }
    }

    fn faq(question: &str, answer: &str) -> Block {
        Block { kind: BlockKind::Faq { question: question.to_string() }, text: answer.to_string() }
    }

    fn document(blocks: Vec<Block>) -> ParsedDocument {
        ParsedDocument { title: None, blocks }
    }

    /// Checks every promise of `chunk_document` on one document and returns the result.
    fn check(document: &ParsedDocument, settings: &ChunkSettings) -> (String, Vec<Chunk>) {
        let (canonical, chunks) = chunk_document(document, settings);
        let chars: Vec<char> = canonical.chars().collect();
        let (_, blocks) = render(document);
        let max = settings.max_chars.max(1);
        let mut covered = vec![false; chars.len()];
        for (index, chunk) in chunks.iter().enumerate() {
            // The text is exactly the slice it claims to be.
            assert_eq!(chunk.ordinal as usize, index);
            assert!(chunk.start < chunk.end && chunk.end <= chars.len(), "{chunk:?}");
            let slice: String = canonical.chars().skip(chunk.start).take(chunk.end - chunk.start).collect();
            assert_eq!(chunk.text, slice);
            assert!(!chunk.text.is_empty());
            assert_eq!(chunk.text.trim(), chunk.text, "chunk {index} has surrounding whitespace");
            assert!(chunk.text.chars().count() <= max, "chunk {index} is too long");
            // Chunks move forward through the text.
            if index > 0 {
                let previous = &chunks[index - 1];
                assert!(chunk.start > previous.start && chunk.end > previous.end, "chunks out of order at {index}");
                if chunk.start < previous.end {
                    // Only pieces of one split range overlap, and by no more than allowed.
                    assert!(previous.end - chunk.start <= settings.overlap_chars, "overlap too long at {index}");
                    assert_eq!(chunk.section_path, previous.section_path);
                }
            }
            for flag in &mut covered[chunk.start..chunk.end] {
                *flag = true;
            }
            // Blocks inside this chunk: no section boundary after body text, FAQ alone.
            let inside: Vec<&RenderedBlock> =
                blocks.iter().filter(|block| block.start < chunk.end && block.end > chunk.start).collect();
            let mut seen_body = false;
            for block in &inside {
                match &block.kind {
                    BlockKind::Heading { .. } => {
                        assert!(!seen_body, "chunk {index} spans two sections: {:?}", chunk.text);
                    }
                    BlockKind::Faq { question } => {
                        assert_eq!(inside.len(), 1, "FAQ chunk {index} holds other blocks");
                        assert_eq!(chunk.section_path, vec![question.trim().to_string()]);
                    }
                    _ => seen_body = true,
                }
            }
            // The section path is the heading stack after the last heading before the chunk's end;
            // a piece holding only some of several leading headings has the path of the last.
            if !inside.iter().any(|block| matches!(block.kind, BlockKind::Faq { .. })) {
                let mut stack: Vec<(u8, String)> = Vec::new();
                for block in blocks.iter().filter(|block| block.start < chunk.end) {
                    if let BlockKind::Heading { level } = block.kind {
                        stack.retain(|(open, _)| *open < level);
                        stack.push((level, block.heading_text.clone()));
                    }
                }
                let expected = section_path(&stack);
                if seen_body {
                    assert_eq!(chunk.section_path, expected, "section path of chunk {index}");
                } else {
                    assert!(chunk.section_path.starts_with(&expected), "section path of chunk {index}");
                }
            }
        }
        // Nothing is lost: every visible character is in some chunk.
        for (at, c) in chars.iter().enumerate() {
            assert!(c.is_whitespace() || covered[at], "character {at} ({c:?}) is in no chunk");
        }
        (canonical, chunks)
    }

    /// Every chunk starts at a word start and ends at a word end (true when no word is longer
    /// than a chunk).
    fn assert_word_aligned(canonical: &str, chunks: &[Chunk]) {
        let chars: Vec<char> = canonical.chars().collect();
        for chunk in chunks {
            assert!(chunk.start == 0 || chars[chunk.start - 1].is_whitespace(), "mid-word start: {:?}", chunk.text);
            assert!(chunk.end == chars.len() || chars[chunk.end].is_whitespace(), "mid-word end: {:?}", chunk.text);
        }
    }

    #[test]
    fn canonical_text_rendering() {
        let doc = document(vec![
            heading(1, " Guide "),
            paragraph("Intro."),
            item("one"),
            paragraph("   "),
            faq("Why?", "Because."),
        ]);
        let (canonical, chunks) = check(&doc, &ChunkSettings::default());
        assert_eq!(canonical, "Guide\n\nIntro.\n\n- one\n\nQ: Why?\nA: Because.");
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].text, "Guide\n\nIntro.\n\n- one");
        assert_eq!(chunks[0].section_path, vec!["Guide"]);
        assert_eq!(chunks[1].text, "Q: Why?\nA: Because.");
        assert_eq!(chunks[1].section_path, vec!["Why?"]);
    }

    #[test]
    fn empty_document_has_no_chunks() {
        let (canonical, chunks) = check(&ParsedDocument::default(), &ChunkSettings::default());
        assert_eq!(canonical, "");
        assert!(chunks.is_empty());
        let (_, chunks) = check(&document(vec![paragraph(" \n "), item("")]), &ChunkSettings::default());
        assert!(chunks.is_empty());
    }

    #[test]
    fn sections_start_new_chunks_and_carry_their_heading() {
        let doc = document(vec![
            paragraph("Preface text."),
            heading(1, "Manual"),
            heading(2, "Install"),
            paragraph("Run the installer."),
            item("Pick a folder."),
            heading(3, "Linux"),
            paragraph("Use the package."),
            heading(2, "Use"),
            paragraph("Press start."),
            heading(2, "Empty section"),
            heading(2, "Last"),
            paragraph("The end."),
        ]);
        let (_, chunks) = check(&doc, &ChunkSettings::default());
        let summary: Vec<(&str, Vec<&str>)> = chunks
            .iter()
            .map(|chunk| (chunk.text.as_str(), chunk.section_path.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("Preface text.", vec![]),
                ("Manual\n\nInstall\n\nRun the installer.\n\n- Pick a folder.", vec!["Manual", "Install"]),
                ("Linux\n\nUse the package.", vec!["Manual", "Install", "Linux"]),
                ("Use\n\nPress start.", vec!["Manual", "Use"]),
                ("Empty section", vec!["Manual", "Empty section"]),
                ("Last\n\nThe end.", vec!["Manual", "Last"]),
            ]
        );
    }

    #[test]
    fn blocks_are_packed_up_to_the_limit() {
        let sentences: Vec<Block> = (0..10).map(|i| paragraph(&format!("Paragraph number {i} is here."))).collect();
        let settings = ChunkSettings { max_chars: 80, overlap_chars: 10 };
        let (canonical, chunks) = check(&document(sentences), &settings);
        // Each paragraph is 27 characters; three of them with two separators make 85 > 80.
        assert_eq!(chunks.len(), 5);
        assert!(chunks.iter().all(|chunk| chunk.text.matches("Paragraph").count() == 2));
        assert_word_aligned(&canonical, &chunks);
    }

    #[test]
    fn long_blocks_split_at_sentences_with_overlap() {
        let text = "The first sentence is about cats. The second sentence is about dogs and their habits. \
                    A third one talks about birds! Is the fourth a question? The fifth sentence ends the paragraph.";
        let doc = document(vec![heading(1, "Animals"), paragraph(text)]);
        let settings = ChunkSettings { max_chars: 100, overlap_chars: 30 };
        let (canonical, chunks) = check(&doc, &settings);
        assert!(chunks.len() >= 3, "{chunks:#?}");
        assert!(chunks[0].text.starts_with("Animals\n\nThe first sentence"));
        for chunk in &chunks {
            assert_eq!(chunk.section_path, vec!["Animals"]);
        }
        // Non-final pieces end at sentence ends.
        for chunk in &chunks[..chunks.len() - 1] {
            assert!(chunk.text.ends_with(['.', '!', '?']), "{:?}", chunk.text);
        }
        // Consecutive pieces overlap, starting at a word.
        for pair in chunks.windows(2) {
            assert!(pair[1].start < pair[0].end, "no overlap between {:?} and {:?}", pair[0].text, pair[1].text);
        }
        assert_word_aligned(&canonical, &chunks);
    }

    #[test]
    fn words_and_hard_cuts_when_there_is_no_sentence() {
        let words = vec!["word"; 60].join(" ");
        let settings = ChunkSettings { max_chars: 50, overlap_chars: 12 };
        let (canonical, chunks) = check(&document(vec![paragraph(&words)]), &settings);
        assert!(chunks.len() > 5);
        assert_word_aligned(&canonical, &chunks);
        for pair in chunks.windows(2) {
            let overlap = pair[0].end - pair[1].start;
            assert!(overlap > 0 && overlap <= 12, "overlap {overlap}");
        }

        let unbroken = "x".repeat(130);
        let (_, chunks) = check(&document(vec![paragraph(&unbroken)]), &settings);
        assert_eq!(chunks[0].text.chars().count(), 50);
        assert!(chunks.len() >= 3);
    }

    #[test]
    fn faq_entries_are_their_own_chunks() {
        let doc = faq_document(&[
            ("What is Parley?".into(), "A runtime for agents.".into()),
            ("Is it free?".into(), "Yes. ".repeat(40)),
        ]);
        let settings = ChunkSettings { max_chars: 60, overlap_chars: 10 };
        let (canonical, chunks) = check(&doc, &settings);
        assert!(canonical.starts_with("Q: What is Parley?\nA: A runtime for agents.\n\nQ: Is it free?\nA: Yes. Yes."));
        assert_eq!(chunks[0].text, "Q: What is Parley?\nA: A runtime for agents.");
        assert_eq!(chunks[0].section_path, vec!["What is Parley?"]);
        assert!(chunks.len() > 3);
        assert!(chunks[1..].iter().all(|chunk| chunk.section_path == vec!["Is it free?"]));
    }

    #[test]
    fn offsets_count_characters_not_bytes() {
        let doc = document(vec![
            heading(1, "Café 日本語"),
            paragraph("Ünïcödé text with emoji 🎉🎉 and accents éèê. 東京は大きい都市です。とても楽しい。"),
            item("naïve façade"),
        ]);
        let (canonical, chunks) = check(&doc, &ChunkSettings::default());
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].end, canonical.chars().count());
        assert!(chunks[0].end < canonical.len(), "the text is multi-byte");

        let settings = ChunkSettings { max_chars: 30, overlap_chars: 8 };
        let (_, chunks) = check(&doc, &settings);
        assert!(chunks.len() > 3);
        // Full-width sentence ends are boundaries even without a following space.
        assert!(chunks.iter().any(|chunk| chunk.text.ends_with('。')), "{chunks:#?}");
    }

    #[test]
    fn plain_text_documents_chunk() {
        let text = (0..30).map(|i| format!("Paragraph {i} says something useful about topic {i}.")).collect::<Vec<_>>();
        let doc = parse_plain_text(&text.join("\n\n"));
        let (canonical, chunks) = check(&doc, &ChunkSettings::default());
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|chunk| chunk.section_path.is_empty()));
        assert_word_aligned(&canonical, &chunks);
    }

    #[test]
    fn invariants_hold_on_generated_documents() {
        // A small deterministic generator: varied structure, lengths, scripts and settings.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let words = ["alpha", "beta", "Ωmega", "日本", "naïve", "x", "longerword", "🎉", "end.", "why?", "wow!\n"];
        for round in 0..200 {
            let mut blocks = Vec::new();
            for _ in 0..next(12) {
                let length = next(if round % 3 == 0 { 200 } else { 40 }) as usize;
                let text: Vec<&str> = (0..length).map(|_| words[next(words.len() as u64) as usize]).collect();
                let text = text.join(" ");
                blocks.push(match next(6) {
                    0 => heading(next(4) as u8 + 1, &text.chars().take(40).collect::<String>()),
                    1 => item(&text),
                    2 => faq(&format!("Question {}?", next(100)), &text),
                    _ => paragraph(&text),
                });
            }
            let max_chars = [1usize, 7, 30, 120, 400, 1200][next(6) as usize];
            let overlap_chars = [0usize, 3, 20, 200][next(4) as usize];
            check(&document(blocks), &ChunkSettings { max_chars, overlap_chars });
        }
    }
}
