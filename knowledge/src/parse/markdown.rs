//! Markdown parsing with pulldown-cmark: headings, paragraphs, list items (one block per item),
//! code blocks and table rows become blocks; the first level-one heading is the title.
//!
//! Owns: the mapping from CommonMark events to blocks.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::{collapse_whitespace, Block, BlockKind, ParsedDocument};

/// Joins the cells of a table row, so the row still reads as a row.
const CELL_SEPARATOR: &str = " | ";

/// The block being collected from inline events, if any.
struct Open {
    kind: BlockKind,
    text: String,
    /// Code keeps its line breaks and indentation; everything else reads as flowing text.
    preformatted: bool,
}

/// Collects blocks from the event stream. List items may contain paragraphs and nested lists,
/// so the builder remembers how deep in items it is to know what kind loose text has.
#[derive(Default)]
struct Builder {
    blocks: Vec<Block>,
    open: Option<Open>,
    item_depth: usize,
    in_metadata: bool,
    title: Option<String>,
}

impl Builder {
    /// The kind that running text has at this point: inside a list item it belongs to the item.
    fn context_kind(&self) -> BlockKind {
        if self.item_depth > 0 {
            BlockKind::ListItem
        } else {
            BlockKind::Paragraph
        }
    }

    fn start(&mut self, kind: BlockKind, preformatted: bool) {
        self.close();
        self.open = Some(Open { kind, text: String::new(), preformatted });
    }

    /// Starts a block of the context kind unless one is already collecting text, so that inline
    /// events that arrive outside any paragraph (tight list items) still land somewhere.
    fn ensure_open(&mut self) -> &mut Open {
        let kind = self.context_kind();
        self.open.get_or_insert_with(|| Open { kind, text: String::new(), preformatted: false })
    }

    fn push_text(&mut self, text: &str) {
        if self.in_metadata {
            return;
        }
        self.ensure_open().text.push_str(text);
    }

    /// Ends the open block, if any, and keeps it when it has text.
    fn close(&mut self) {
        let Some(open) = self.open.take() else { return };
        let text = if open.preformatted {
            open.text.lines().map(str::trim_end).collect::<Vec<_>>().join("\n").trim_matches('\n').to_string()
        } else {
            collapse_whitespace(&open.text)
        };
        if text.trim().is_empty() {
            return;
        }
        if matches!(open.kind, BlockKind::Heading { level: 1 }) && self.title.is_none() {
            self.title = Some(text.clone());
        }
        self.blocks.push(Block::new(open.kind, text));
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start_tag(tag),
            Event::End(tag) => self.end_tag(tag),
            Event::Text(text) | Event::Code(text) | Event::InlineMath(text) => self.push_text(&text),
            Event::DisplayMath(text) => {
                self.push_text(" ");
                self.push_text(&text);
                self.push_text(" ");
            }
            Event::SoftBreak | Event::HardBreak => self.push_text("\n"),
            // Raw HTML, footnote markers, rules and task boxes carry no readable text.
            Event::Html(_)
            | Event::InlineHtml(_)
            | Event::FootnoteReference(_)
            | Event::Rule
            | Event::TaskListMarker(_) => {}
        }
    }

    fn start_tag(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Heading { level, .. } => self.start(BlockKind::Heading { level: heading_level(level) }, false),
            Tag::Paragraph => {
                // A paragraph inside a list item continues the item rather than ending it.
                if self.item_depth == 0 {
                    self.start(BlockKind::Paragraph, false);
                } else {
                    self.push_text("\n");
                }
            }
            Tag::Item => {
                self.close();
                self.item_depth += 1;
                self.start(BlockKind::ListItem, false);
            }
            Tag::CodeBlock(_) => self.start(BlockKind::Paragraph, true),
            Tag::TableHead | Tag::TableRow => self.start(BlockKind::Paragraph, false),
            Tag::MetadataBlock(_) => {
                self.close();
                self.in_metadata = true;
            }
            Tag::List(_)
            | Tag::BlockQuote(_)
            | Tag::HtmlBlock
            | Tag::FootnoteDefinition(_)
            | Tag::DefinitionList
            | Tag::DefinitionListTitle
            | Tag::DefinitionListDefinition
            | Tag::Table(_) => self.close(),
            Tag::TableCell
            | Tag::Emphasis
            | Tag::Strong
            | Tag::Strikethrough
            | Tag::Superscript
            | Tag::Subscript
            | Tag::Link { .. }
            | Tag::Image { .. } => {}
        }
    }

    fn end_tag(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Heading(_) | TagEnd::CodeBlock => self.close(),
            TagEnd::TableHead | TagEnd::TableRow => {
                // The last cell's separator says nothing once the row is complete.
                if let Some(open) = self.open.as_mut() {
                    if let Some(kept) = open.text.strip_suffix(CELL_SEPARATOR).map(str::len) {
                        open.text.truncate(kept);
                    }
                }
                self.close();
            }
            TagEnd::Paragraph => {
                if self.item_depth == 0 {
                    self.close();
                }
            }
            TagEnd::Item => {
                self.close();
                self.item_depth = self.item_depth.saturating_sub(1);
            }
            // Cells of a row are kept apart so the row still reads as a table row.
            TagEnd::TableCell => {
                if let Some(open) = self.open.as_mut() {
                    open.text.push_str(CELL_SEPARATOR);
                }
            }
            TagEnd::MetadataBlock(_) => self.in_metadata = false,
            TagEnd::List(_)
            | TagEnd::BlockQuote(_)
            | TagEnd::HtmlBlock
            | TagEnd::FootnoteDefinition
            | TagEnd::DefinitionList
            | TagEnd::DefinitionListTitle
            | TagEnd::DefinitionListDefinition
            | TagEnd::Table => self.close(),
            TagEnd::Emphasis
            | TagEnd::Strong
            | TagEnd::Strikethrough
            | TagEnd::Superscript
            | TagEnd::Subscript
            | TagEnd::Link
            | TagEnd::Image => {}
        }
    }
}

fn heading_level(level: HeadingLevel) -> u8 {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

/// Tables, footnotes, strikethrough, task lists and front matter are common in documentation,
/// so the GitHub-flavoured extensions are on; front matter is skipped rather than indexed.
pub(super) fn parse(text: &str) -> ParsedDocument {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS;
    let mut builder = Builder::default();
    for event in Parser::new_ext(text, options) {
        builder.event(event);
    }
    builder.close();
    ParsedDocument { title: builder.title, blocks: builder.blocks }
}

#[cfg(test)]
mod tests {
    use super::super::{parse as parse_bytes, Format, ParseLimits};
    use super::*;

    fn kinds_and_texts(document: &ParsedDocument) -> Vec<(BlockKind, &str)> {
        document.blocks.iter().map(|block| (block.kind.clone(), block.text.as_str())).collect()
    }

    #[test]
    fn headings_lists_and_code() {
        let source = "---\nauthor: someone\n---\n\n# User *guide*\n\nIntro text\nover two lines.\n\n## Install\n\n\
                      - first `step`\n- second step\n  - nested step\n- third\n\n1. Loose item\n\n   with more\n\n\
                      ```sh\ncargo build\n  --release\n```\n\n> Quoted note.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n";
        let document = parse(source);
        assert_eq!(document.title.as_deref(), Some("User guide"));
        assert_eq!(
            kinds_and_texts(&document),
            vec![
                (BlockKind::Heading { level: 1 }, "User guide"),
                (BlockKind::Paragraph, "Intro text over two lines."),
                (BlockKind::Heading { level: 2 }, "Install"),
                (BlockKind::ListItem, "first step"),
                (BlockKind::ListItem, "second step"),
                (BlockKind::ListItem, "nested step"),
                (BlockKind::ListItem, "third"),
                (BlockKind::ListItem, "Loose item with more"),
                (BlockKind::Paragraph, "cargo build\n  --release"),
                (BlockKind::Paragraph, "Quoted note."),
                (BlockKind::Paragraph, "a | b"),
                (BlockKind::Paragraph, "1 | 2"),
            ]
        );
    }

    #[test]
    fn title_is_the_first_level_one_heading() {
        let document = parse("## Before\n\ntext\n\n# Real title\n\n# Second\n");
        assert_eq!(document.title.as_deref(), Some("Real title"));
        assert_eq!(parse("just text").title, None);
    }

    #[test]
    fn markdown_files_parse_through_the_entry_point() {
        let document = parse_bytes(b"# T\xe9l\xe9\n\nBody.", Format::Markdown, &ParseLimits::default()).unwrap();
        assert_eq!(document.title.as_deref(), Some("Télé"));
        assert_eq!(document.blocks.len(), 2);
    }
}
