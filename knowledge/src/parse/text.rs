//! Plain-text parsing: already-decoded text becomes one paragraph per run of non-blank lines.
//!
//! Owns: nothing beyond that rule; decoding and binary detection happen in the parent module so
//! that every text-like format shares them.

use super::{split_paragraphs, Block, BlockKind, ParsedDocument};

/// Plain text has no markup, so no title is guessed from it: the first line of a text file is
/// as likely to be a sentence as a heading.
pub(super) fn parse(text: &str) -> ParsedDocument {
    let blocks =
        split_paragraphs(text).into_iter().map(|paragraph| Block::new(BlockKind::Paragraph, paragraph)).collect();
    ParsedDocument { title: None, blocks }
}

#[cfg(test)]
mod tests {
    use super::super::{parse as parse_bytes, Format, ParseLimits};
    use super::*;

    #[test]
    fn paragraphs_split_at_blank_lines() {
        let text = "First line\r\ncontinues here.\r\n\r\nSecond   paragraph\n \t\nThird\n";
        let document = parse(text);
        let texts: Vec<&str> = document.blocks.iter().map(|block| block.text.as_str()).collect();
        assert_eq!(texts, ["First line continues here.", "Second   paragraph", "Third"]);
        assert!(document.blocks.iter().all(|block| block.kind == BlockKind::Paragraph));
        assert_eq!(document.title, None);
    }

    #[test]
    fn text_files_decode_and_split() {
        let bytes = b"Caf\xe9 au lait\nis hot.\n\nSecond.";
        let document = parse_bytes(bytes, Format::Text, &ParseLimits::default()).unwrap();
        assert_eq!(document.blocks.len(), 2);
        assert_eq!(document.blocks[0].text, "Café au lait is hot.");
        assert_eq!(document.blocks[1].text, "Second.");
    }
}
