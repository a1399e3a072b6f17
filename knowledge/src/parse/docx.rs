//! DOCX parsing: the ZIP package is opened with `zip`, the main document part is read with
//! quick-xml, and every `<w:p>` becomes a heading, list item or paragraph according to its
//! style and numbering.
//!
//! Owns: the package lookup (main part, styles part), the style table and the paragraph rules.
//! Headers, footers, comments and footnotes live in other parts and are left out on purpose:
//! they repeat on every page or annotate rather than say what the document says.

use std::collections::HashMap;
use std::io::{Cursor, Read, Seek};

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::NsReader;
use zip::result::ZipError;
use zip::ZipArchive;

use super::{collapse_whitespace, Block, BlockKind, Format, ParseError, ParseLimits, ParsedDocument};

/// The WordprocessingML namespace, in its transitional and strict spellings.
const WORD_NAMESPACES: [&[u8]; 2] = [
    b"http://schemas.openxmlformats.org/wordprocessingml/2006/main",
    b"http://purl.oclc.org/ooxml/wordprocessingml/main",
];

/// Markup compatibility: `mc:Fallback` repeats the content of `mc:Choice` for older readers.
const MARKUP_COMPATIBILITY: &[u8] = b"http://schemas.openxmlformats.org/markup-compatibility/2006";

/// How many times larger than the upload limit an unpacked XML part may be. Text compresses
/// well, so a legitimate document's XML is often several times its ZIP size; beyond this it is
/// most likely a ZIP bomb.
const EXPANSION_FACTOR: usize = 8;

/// Where the main document part lives when the package relationships do not say otherwise.
const DEFAULT_MAIN_PART: &str = "word/document.xml";

fn corrupt(reason: impl Into<String>) -> ParseError {
    ParseError::corrupt(Format::Docx, reason)
}

pub(super) fn parse(bytes: &[u8], limits: &ParseLimits) -> Result<ParsedDocument, ParseError> {
    let mut archive =
        ZipArchive::new(Cursor::new(bytes)).map_err(|error| corrupt(format!("it is not a ZIP archive ({error})")))?;
    let main_part = main_part_name(&mut archive, limits)?;
    let document_xml = read_part(&mut archive, &main_part, limits)?
        .ok_or_else(|| corrupt(format!("the package has no {main_part}")))?;
    // The styles part is optional; without it (or if it is damaged) the style IDs themselves
    // still identify the built-in heading styles.
    let styles_part = match main_part.rsplit_once('/') {
        Some((directory, _)) => format!("{directory}/styles.xml"),
        None => "styles.xml".to_string(),
    };
    let styles = match read_part(&mut archive, &styles_part, limits)? {
        Some(xml) => parse_styles(&xml).unwrap_or_default(),
        None => Styles::default(),
    };
    let paragraphs = read_paragraphs(&document_xml)?;

    let mut title = None;
    let mut first_heading = None;
    let mut blocks = Vec::new();
    for paragraph in paragraphs {
        let text = paragraph.text.trim();
        if text.is_empty() {
            continue;
        }
        let role = paragraph.style.as_deref().map(|id| styles.role(id)).unwrap_or(StyleRole::Body);
        let kind = match role {
            StyleRole::Title => {
                if title.is_none() {
                    title = Some(collapse_whitespace(text));
                }
                BlockKind::Heading { level: 1 }
            }
            StyleRole::Heading(level) => {
                if level == 1 && first_heading.is_none() {
                    first_heading = Some(collapse_whitespace(text));
                }
                BlockKind::Heading { level }
            }
            StyleRole::Body => {
                let numbered = paragraph
                    .numbered
                    .unwrap_or_else(|| paragraph.style.as_deref().is_some_and(|id| styles.is_numbered(id)));
                if numbered {
                    BlockKind::ListItem
                } else {
                    BlockKind::Paragraph
                }
            }
        };
        blocks.push(Block::new(kind, text));
    }
    Ok(ParsedDocument { title: title.or(first_heading), blocks })
}

/// The main document part named by the package relationships (`_rels/.rels`), which is
/// `word/document.xml` in every file Word writes but is not required to be.
fn main_part_name<R: Read + Seek>(archive: &mut ZipArchive<R>, limits: &ParseLimits) -> Result<String, ParseError> {
    let Some(relationships) = read_part(archive, "_rels/.rels", limits)? else {
        return Ok(DEFAULT_MAIN_PART.to_string());
    };
    let mut reader = NsReader::from_str(&relationships);
    loop {
        match reader.read_event() {
            Ok(Event::Start(element) | Event::Empty(element)) if element.local_name().as_ref() == b"Relationship" => {
                let kind = attribute(&element, b"Type").unwrap_or_default();
                if kind.ends_with("/officeDocument") {
                    if let Some(target) = attribute(&element, b"Target") {
                        let target = target.trim_start_matches('/');
                        if !target.is_empty() {
                            return Ok(target.to_string());
                        }
                    }
                }
            }
            Ok(Event::Eof) | Err(_) => return Ok(DEFAULT_MAIN_PART.to_string()),
            Ok(_) => {}
        }
    }
}

/// Reads one part of the package as UTF-8 text; `None` when the package has no such part.
fn read_part<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    name: &str,
    limits: &ParseLimits,
) -> Result<Option<String>, ParseError> {
    let file = match archive.by_name(name) {
        Ok(file) => file,
        Err(ZipError::FileNotFound) => return Ok(None),
        Err(error) => return Err(corrupt(format!("{name} cannot be read ({error})"))),
    };
    let expanded_limit = limits.max_bytes.saturating_mul(EXPANSION_FACTOR);
    let mut bytes = Vec::new();
    file.take(expanded_limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| corrupt(format!("{name} cannot be unpacked ({error})")))?;
    if bytes.len() > expanded_limit {
        return Err(ParseError::TooLarge { limit: limits.max_bytes });
    }
    let text = String::from_utf8(bytes).map_err(|_| corrupt(format!("{name} is not UTF-8 XML")))?;
    Ok(Some(text.trim_start_matches('\u{feff}').to_string()))
}

/// The value of the attribute with the given local name (namespace prefixes vary between
/// writers, and attribute names are unambiguous within the elements read here).
fn attribute(element: &BytesStart<'_>, local_name: &[u8]) -> Option<String> {
    element
        .attributes()
        .flatten()
        .find(|attribute| attribute.key.local_name().as_ref() == local_name)
        .and_then(|attribute| attribute.unescape_value().ok().map(|value| value.into_owned()))
}

fn is_word(namespace: &ResolveResult<'_>) -> bool {
    matches!(namespace, ResolveResult::Bound(Namespace(uri)) if WORD_NAMESPACES.contains(uri))
}

/// What a paragraph style makes of a paragraph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StyleRole {
    Title,
    Heading(u8),
    Body,
}

/// One paragraph style from `styles.xml`.
#[derive(Debug, Default, Clone)]
struct Style {
    name: Option<String>,
    based_on: Option<String>,
    outline_level: Option<u8>,
    numbered: Option<bool>,
}

/// The paragraph styles of a document, by style ID. Style IDs are localised (a German Word
/// writes `berschrift1`), so the style's English built-in name and outline level decide.
#[derive(Debug, Default)]
struct Styles {
    by_id: HashMap<String, Style>,
}

/// How far `basedOn` chains are followed; real documents are a few levels deep, and a cycle
/// in a damaged file must not loop forever.
const MAX_STYLE_DEPTH: usize = 16;

impl Styles {
    fn role(&self, id: &str) -> StyleRole {
        let mut current = id;
        for _ in 0..MAX_STYLE_DEPTH {
            let Some(style) = self.by_id.get(current) else {
                // Unknown styles (or no styles part) fall back to the built-in style IDs.
                return role_from_name(current);
            };
            if let Some(name) = &style.name {
                let role = role_from_name(name);
                if role != StyleRole::Body {
                    return role;
                }
            }
            if let Some(level) = style.outline_level {
                // Outline levels 0–8 are heading levels 1–9; 9 means body text.
                return if level < 9 { StyleRole::Heading((level + 1).min(6)) } else { StyleRole::Body };
            }
            match &style.based_on {
                Some(parent) => current = parent,
                None => return role_from_name(id),
            }
        }
        StyleRole::Body
    }

    fn is_numbered(&self, id: &str) -> bool {
        let mut current = id;
        for _ in 0..MAX_STYLE_DEPTH {
            let Some(style) = self.by_id.get(current) else { return false };
            if let Some(numbered) = style.numbered {
                return numbered;
            }
            match &style.based_on {
                Some(parent) => current = parent,
                None => return false,
            }
        }
        false
    }
}

/// Recognises "Title", "heading 1"… in a style name or ID, ignoring case and spaces.
fn role_from_name(name: &str) -> StyleRole {
    let compact: String = name.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    if compact == "title" {
        return StyleRole::Title;
    }
    match compact.strip_prefix("heading").and_then(|level| level.parse::<u8>().ok()) {
        Some(level @ 1..=9) => StyleRole::Heading(level.min(6)),
        _ => StyleRole::Body,
    }
}

/// Whether a `numPr` turns numbering on: `numId` 0 explicitly switches it off.
fn numbering_from(num_id: Option<String>) -> bool {
    num_id.is_none_or(|id| id.trim() != "0")
}

fn parse_styles(xml: &str) -> Result<Styles, quick_xml::Error> {
    let mut reader = NsReader::from_str(xml);
    reader.config_mut().expand_empty_elements = true;
    let mut styles = Styles::default();
    let mut current: Option<(String, Style)> = None;
    let mut in_num_pr = false;
    loop {
        let (namespace, event) = reader.read_resolved_event()?;
        match event {
            Event::Start(element) if is_word(&namespace) => {
                let local = element.local_name();
                match local.as_ref() {
                    b"style" => {
                        let paragraph_style = attribute(&element, b"type").is_none_or(|kind| kind == "paragraph");
                        current = match attribute(&element, b"styleId") {
                            Some(id) if paragraph_style => Some((id, Style::default())),
                            _ => None,
                        };
                    }
                    b"name" => {
                        if let Some((_, style)) = current.as_mut() {
                            style.name = attribute(&element, b"val");
                        }
                    }
                    b"basedOn" => {
                        if let Some((_, style)) = current.as_mut() {
                            style.based_on = attribute(&element, b"val");
                        }
                    }
                    b"outlineLvl" => {
                        if let Some((_, style)) = current.as_mut() {
                            style.outline_level = attribute(&element, b"val").and_then(|v| v.trim().parse().ok());
                        }
                    }
                    b"numPr" => {
                        in_num_pr = true;
                        if let Some((_, style)) = current.as_mut() {
                            style.numbered.get_or_insert(true);
                        }
                    }
                    b"numId" if in_num_pr => {
                        if let Some((_, style)) = current.as_mut() {
                            style.numbered = Some(numbering_from(attribute(&element, b"val")));
                        }
                    }
                    _ => {}
                }
            }
            Event::End(element) if is_word(&namespace) => match element.local_name().as_ref() {
                b"style" => {
                    if let Some((id, style)) = current.take() {
                        styles.by_id.insert(id, style);
                    }
                }
                b"numPr" => in_num_pr = false,
                _ => {}
            },
            Event::Eof => return Ok(styles),
            _ => {}
        }
    }
}

/// A paragraph as read from the document: its style ID, its own numbering setting (which
/// overrides the style's) and its text.
#[derive(Debug, Default)]
struct Paragraph {
    style: Option<String>,
    numbered: Option<bool>,
    text: String,
    /// Depth inside `<w:pPr>`: tab stops are declared there with the same `<w:tab>` element
    /// that stands for a tab character inside a run.
    properties_depth: usize,
    in_num_pr: bool,
}

/// Reads every `<w:p>` of the main part in document order. Paragraphs can nest (a text box
/// sits inside a run of its anchor paragraph), hence the stack; a nested paragraph is
/// emitted when it ends, before the paragraph around it.
fn read_paragraphs(xml: &str) -> Result<Vec<Paragraph>, ParseError> {
    let xml_error = |error: quick_xml::Error| corrupt(format!("word/document.xml is not well-formed XML ({error})"));
    let mut reader = NsReader::from_str(xml);
    reader.config_mut().expand_empty_elements = true;
    let mut finished = Vec::new();
    let mut open: Vec<Paragraph> = Vec::new();
    let mut in_text = false;
    let mut saw_body = false;
    loop {
        let (namespace, event) = reader.read_resolved_event().map_err(xml_error)?;
        match event {
            Event::Start(element) => {
                let local = element.local_name();
                let local = local.as_ref();
                if matches!(&namespace, ResolveResult::Bound(Namespace(uri)) if *uri == MARKUP_COMPATIBILITY)
                    && local == b"Fallback"
                {
                    // The fallback repeats the chosen content; reading both would double it.
                    reader.read_to_end(element.name()).map_err(xml_error)?;
                    continue;
                }
                if !is_word(&namespace) {
                    continue;
                }
                match local {
                    b"body" => saw_body = true,
                    b"p" => open.push(Paragraph::default()),
                    // Text moved away (tracked changes) still sits in the file as plain runs.
                    b"moveFrom" => {
                        reader.read_to_end(element.name()).map_err(xml_error)?;
                    }
                    _ => {
                        if let Some(paragraph) = open.last_mut() {
                            start_in_paragraph(paragraph, local, &element, &mut in_text);
                        }
                    }
                }
            }
            Event::End(element) if is_word(&namespace) => match element.local_name().as_ref() {
                b"p" => {
                    if let Some(paragraph) = open.pop() {
                        finished.push(paragraph);
                    }
                    in_text = false;
                }
                b"t" => in_text = false,
                b"pPr" => {
                    if let Some(paragraph) = open.last_mut() {
                        paragraph.properties_depth = paragraph.properties_depth.saturating_sub(1);
                    }
                }
                b"numPr" => {
                    if let Some(paragraph) = open.last_mut() {
                        paragraph.in_num_pr = false;
                    }
                }
                _ => {}
            },
            Event::Text(text) if in_text => {
                let text = text.unescape().map_err(xml_error)?;
                if let Some(paragraph) = open.last_mut() {
                    paragraph.text.push_str(&text);
                }
            }
            Event::CData(data) if in_text => {
                if let Some(paragraph) = open.last_mut() {
                    paragraph.text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_body {
        return Err(corrupt("word/document.xml has no document body"));
    }
    Ok(finished)
}

/// Handles an element that starts inside a paragraph.
fn start_in_paragraph(paragraph: &mut Paragraph, local: &[u8], element: &BytesStart<'_>, in_text: &mut bool) {
    match local {
        b"pPr" => paragraph.properties_depth += 1,
        b"pStyle" if paragraph.properties_depth > 0 => paragraph.style = attribute(element, b"val"),
        b"numPr" if paragraph.properties_depth > 0 => {
            paragraph.in_num_pr = true;
            paragraph.numbered.get_or_insert(true);
        }
        b"numId" if paragraph.in_num_pr => paragraph.numbered = Some(numbering_from(attribute(element, b"val"))),
        b"t" => *in_text = true,
        b"tab" if paragraph.properties_depth == 0 => paragraph.text.push('\t'),
        b"br" | b"cr" => paragraph.text.push('\n'),
        b"noBreakHyphen" => paragraph.text.push('-'),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use zip::write::SimpleFileOptions;
    use zip::ZipWriter;

    use super::super::parse as parse_bytes;
    use super::*;

    const CONTENT_TYPES: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>
</Types>"#;

    const RELS: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/>
</Relationships>"#;

    /// Wraps paragraphs in a complete `word/document.xml`.
    fn document_xml(body: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"
 xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006"><w:body>{body}<w:sectPr/></w:body></w:document>"#
        )
    }

    /// Builds a real DOCX package from its parts.
    fn build_docx(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        for (name, content) in parts {
            writer.start_file(*name, SimpleFileOptions::default()).unwrap();
            writer.write_all(content.as_bytes()).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    fn sample_docx(body: &str, styles: Option<&str>) -> Vec<u8> {
        let document = document_xml(body);
        let mut parts =
            vec![("[Content_Types].xml", CONTENT_TYPES), ("_rels/.rels", RELS), ("word/document.xml", &document)];
        if let Some(styles) = styles {
            parts.push(("word/styles.xml", styles));
        }
        build_docx(&parts)
    }

    fn kinds_and_texts(document: &ParsedDocument) -> Vec<(BlockKind, &str)> {
        document.blocks.iter().map(|block| (block.kind.clone(), block.text.as_str())).collect()
    }

    const BODY: &str = r#"
<w:p><w:pPr><w:pStyle w:val="Title"/></w:pPr><w:r><w:t>Employee</w:t></w:r><w:r><w:t xml:space="preserve"> handbook</w:t></w:r></w:p>
<w:p><w:pPr><w:pStyle w:val="Heading1"/><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr><w:r><w:t>Leave &amp; holidays</w:t></w:r></w:p>
<w:p><w:r><w:t>Ask</w:t></w:r><w:r><w:tab/><w:t>early.</w:t><w:br/><w:t>Line two</w:t></w:r></w:p>
<w:p><w:pPr><w:numPr><w:ilvl w:val="0"/><w:numId w:val="3"/></w:numPr></w:pPr><w:r><w:t>First item</w:t></w:r></w:p>
<w:p><w:pPr><w:pStyle w:val="ListBullet"/></w:pPr><w:r><w:t>Styled item</w:t></w:r></w:p>
<w:p><w:pPr><w:pStyle w:val="Heading2"/></w:pPr><w:r><w:t>Sick days</w:t></w:r><w:r><w:delText>removed</w:delText></w:r></w:p>
<w:p><w:pPr><w:pStyle w:val="berschrift3"/></w:pPr><w:r><w:t>Localised heading</w:t></w:r></w:p>
<w:p/>
<w:p><w:r><w:t>   </w:t></w:r></w:p>
<w:tbl><w:tr><w:tc><w:p><w:r><w:t>Cell text</w:t></w:r></w:p></w:tc></w:tr></w:tbl>
<w:p><w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:t>Chosen</w:t></mc:Choice><mc:Fallback><w:t>Fallback copy</w:t></mc:Fallback></mc:AlternateContent></w:r></w:p>
"#;

    const STYLES: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:styles xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">
<w:style w:type="paragraph" w:styleId="berschrift3"><w:name w:val="heading 3"/><w:pPr><w:outlineLvl w:val="2"/></w:pPr></w:style>
<w:style w:type="paragraph" w:styleId="ListBullet"><w:name w:val="List Bullet"/><w:pPr><w:numPr><w:numId w:val="7"/></w:numPr></w:pPr></w:style>
</w:styles>"#;

    #[test]
    fn paragraphs_headings_lists_and_title() {
        let document = parse_bytes(&sample_docx(BODY, Some(STYLES)), Format::Docx, &ParseLimits::default()).unwrap();
        assert_eq!(document.title.as_deref(), Some("Employee handbook"));
        assert_eq!(
            kinds_and_texts(&document),
            vec![
                (BlockKind::Heading { level: 1 }, "Employee handbook"),
                (BlockKind::Heading { level: 1 }, "Leave & holidays"),
                (BlockKind::Paragraph, "Ask\tearly.\nLine two"),
                (BlockKind::ListItem, "First item"),
                (BlockKind::ListItem, "Styled item"),
                (BlockKind::Heading { level: 2 }, "Sick days"),
                (BlockKind::Heading { level: 3 }, "Localised heading"),
                (BlockKind::Paragraph, "Cell text"),
                (BlockKind::Paragraph, "Chosen"),
            ]
        );
    }

    #[test]
    fn built_in_style_ids_work_without_a_styles_part() {
        let body = r#"<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>Intro</w:t></w:r></w:p>
                      <w:p><w:r><w:t>Text.</w:t></w:r></w:p>"#;
        let document = parse_bytes(&sample_docx(body, None), Format::Docx, &ParseLimits::default()).unwrap();
        // Without a Title paragraph, the first level-one heading names the document.
        assert_eq!(document.title.as_deref(), Some("Intro"));
        assert_eq!(
            kinds_and_texts(&document),
            vec![(BlockKind::Heading { level: 1 }, "Intro"), (BlockKind::Paragraph, "Text.")]
        );
    }

    #[test]
    fn broken_packages_are_corrupt() {
        let limits = ParseLimits::default();
        let not_zip = parse_bytes(b"this is not a zip file at all", Format::Docx, &limits).unwrap_err();
        assert!(matches!(not_zip, ParseError::Corrupt { format: "docx", .. }), "{not_zip:?}");

        let no_document = build_docx(&[("[Content_Types].xml", CONTENT_TYPES), ("_rels/.rels", RELS)]);
        let error = parse_bytes(&no_document, Format::Docx, &limits).unwrap_err();
        assert!(
            matches!(&error, ParseError::Corrupt { reason, .. } if reason.contains("word/document.xml")),
            "{error:?}"
        );

        let bad_xml = build_docx(&[("word/document.xml", "<w:document xmlns:w=\"x\"><w:body><w:p></w:body>")]);
        let error = parse_bytes(&bad_xml, Format::Docx, &limits).unwrap_err();
        assert!(matches!(error, ParseError::Corrupt { format: "docx", .. }), "{error:?}");

        let valid = sample_docx(BODY, None);
        let truncated = &valid[..valid.len() / 2];
        let error = parse_bytes(truncated, Format::Docx, &limits).unwrap_err();
        assert!(matches!(error, ParseError::Corrupt { format: "docx", .. }), "{error:?}");
    }

    #[test]
    fn empty_documents_are_empty() {
        let document = sample_docx("<w:p/><w:p><w:r><w:t> </w:t></w:r></w:p>", None);
        assert!(matches!(parse_bytes(&document, Format::Docx, &ParseLimits::default()), Err(ParseError::Empty)));
    }

    #[test]
    fn unpacked_size_is_bounded() {
        let body = format!("<w:p><w:r><w:t>{}</w:t></w:r></w:p>", "a".repeat(50_000));
        let docx = sample_docx(&body, None);
        // The ZIP is small (the text compresses well), but it unpacks to far more than 8 × 2 KB.
        let limits = ParseLimits { max_bytes: docx.len().max(2048), max_pdf_pages: 1 };
        assert!(matches!(parse_bytes(&docx, Format::Docx, &limits), Err(ParseError::TooLarge { .. })));
    }
}
