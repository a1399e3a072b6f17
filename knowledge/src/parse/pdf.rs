//! PDF parsing with pdf-extract (and the lopdf document model it re-exports): the page count is
//! checked against the limit, the text of each page is extracted and split into paragraphs at
//! blank lines, and the title comes from the Info dictionary.
//!
//! Owns: the panic guard around pdf-extract, which is known to panic on some damaged files;
//! every call into it goes through [`guarded`] so that a bad upload is an error, not a crash.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pdf_extract::{decode_text_string, output_doc_page, Document, PlainTextOutput};

use super::{collapse_whitespace, split_paragraphs, Block, BlockKind, Format, ParseError, ParseLimits, ParsedDocument};

pub(super) fn parse(bytes: &[u8], limits: &ParseLimits) -> Result<ParsedDocument, ParseError> {
    if !bytes.starts_with(b"%PDF-") && !bytes.get(..1024).is_some_and(|head| contains(head, b"%PDF-")) {
        return Err(ParseError::corrupt(Format::Pdf, "the file does not start like a PDF"));
    }
    let mut document = guarded(|| Document::load_mem(bytes))?
        .map_err(|error| ParseError::corrupt(Format::Pdf, format!("the PDF structure cannot be read ({error})")))?;
    if document.is_encrypted() {
        // Many PDFs are encrypted with an empty user password only to restrict printing or
        // copying; those open. Anything else needs a password we do not have.
        guarded(|| document.decrypt(""))?
            .map_err(|_| ParseError::corrupt(Format::Pdf, "the PDF is protected by a password"))?;
    }
    let pages = guarded(|| document.get_pages())?;
    if pages.len() > limits.max_pdf_pages {
        return Err(ParseError::TooManyPages { pages: pages.len(), limit: limits.max_pdf_pages });
    }
    if pages.is_empty() {
        return Err(ParseError::corrupt(Format::Pdf, "the PDF has no pages"));
    }

    let mut blocks = Vec::new();
    let mut first_line = None;
    let mut last_failure = None;
    let mut failed_pages = 0usize;
    for &page_number in pages.keys() {
        match page_text(&document, page_number) {
            Ok(text) => {
                if first_line.is_none() {
                    first_line = text.lines().map(str::trim).find(|line| !line.is_empty()).map(str::to_string);
                }
                blocks.extend(split_paragraphs(&text).into_iter().map(|text| Block::new(BlockKind::Paragraph, text)));
            }
            Err(reason) => {
                // One damaged page should not cost the rest of the document its text.
                tracing::warn!(page = page_number, %reason, "skipping a PDF page whose text cannot be extracted");
                failed_pages += 1;
                last_failure = Some(reason);
            }
        }
    }
    if failed_pages == pages.len() {
        let reason = last_failure.unwrap_or_else(|| "no page could be read".to_string());
        return Err(ParseError::corrupt(Format::Pdf, format!("no page's text could be extracted ({reason})")));
    }
    let title = info_title(&document).or(first_line.map(|line| collapse_whitespace(&line)));
    Ok(ParsedDocument { title, blocks })
}

/// The text of one page, with control characters (other than line breaks and tabs) removed:
/// broken font encodings produce them, and they would only confuse search.
fn page_text(document: &Document, page_number: u32) -> Result<String, String> {
    let mut text = String::new();
    let outcome = guarded(|| {
        let mut output = PlainTextOutput::new(&mut text);
        output_doc_page(document, &mut output, page_number)
    });
    match outcome {
        Ok(Ok(())) => Ok(text.chars().filter(|c| !c.is_control() || matches!(c, '\n' | '\t')).collect()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// The Title entry of the document's Info dictionary, when it has a readable, non-empty one.
fn info_title(document: &Document) -> Option<String> {
    guarded(|| {
        let info = document.trailer.get(b"Info").ok()?;
        let (_, info) = document.dereference(info).ok()?;
        let title = info.as_dict().ok()?.get(b"Title").ok()?;
        let (_, title) = document.dereference(title).ok()?;
        decode_text_string(title).ok()
    })
    .ok()
    .flatten()
    .map(|title| collapse_whitespace(&title))
    .filter(|title| !title.is_empty())
}

/// Runs a call into the PDF libraries, turning a panic into [`ParseError::Corrupt`]. The
/// closure only reads the uploaded bytes or a document built from them, and a document whose
/// reading panicked is dropped right after, so no broken state outlives the panic.
fn guarded<T>(call: impl FnOnce() -> T) -> Result<T, ParseError> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| {
        let detail = payload
            .downcast_ref::<&str>()
            .map(|message| message.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".to_string());
        ParseError::corrupt(Format::Pdf, format!("the PDF reader failed: {detail}"))
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::super::parse as parse_bytes;
    use super::*;

    /// Escapes a string for a PDF literal string.
    fn pdf_string(text: &str) -> String {
        text.replace('\\', "\\\\").replace('(', "\\(").replace(')', "\\)")
    }

    /// Writes a small but complete PDF: a catalog, a page tree, one page per entry of `pages`
    /// (each a list of paragraphs, each a list of lines) set in Type1 Helvetica, an Info
    /// dictionary when a title is given, and a correct cross-reference table.
    fn build_pdf(pages: &[&[&[&str]]], title: Option<&str>) -> Vec<u8> {
        let page_count = pages.len();
        // Objects: 1 catalog, 2 page tree, 3 font, then a page and its content per page, then Info.
        let mut objects: Vec<String> = Vec::new();
        objects.push("<< /Type /Catalog /Pages 2 0 R >>".to_string());
        let kids: Vec<String> = (0..page_count).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
        objects.push(format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), page_count));
        objects.push("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string());
        for (i, paragraphs) in pages.iter().enumerate() {
            let content_id = 5 + 2 * i;
            objects.push(format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> \
                 /Contents {content_id} 0 R >>"
            ));
            let mut stream = String::from("BT /F1 12 Tf 72 720 Td\n");
            for (p, lines) in paragraphs.iter().enumerate() {
                for (l, line) in lines.iter().enumerate() {
                    if p > 0 || l > 0 {
                        // A line is 14 points below the last; a paragraph leaves a 36-point gap.
                        let step = if l == 0 { 36 } else { 14 };
                        stream.push_str(&format!("0 -{step} Td\n"));
                    }
                    stream.push_str(&format!("({}) Tj\n", pdf_string(line)));
                }
            }
            stream.push_str("ET");
            objects.push(format!("<< /Length {} >>\nstream\n{}\nendstream", stream.len(), stream));
        }
        if let Some(title) = title {
            objects.push(format!("<< /Title ({}) /Producer (parley tests) >>", pdf_string(title)));
        }

        let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
        let mut offsets = Vec::new();
        for (i, object) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend(format!("{} 0 obj\n{}\nendobj\n", i + 1, object).into_bytes());
        }
        let xref_offset = out.len();
        out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).into_bytes());
        for offset in offsets {
            out.extend(format!("{offset:010} 00000 n \n").into_bytes());
        }
        let info = if title.is_some() { format!(" /Info {} 0 R", objects.len()) } else { String::new() };
        out.extend(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R{} >>\nstartxref\n{}\n%%EOF\n",
                objects.len() + 1,
                info,
                xref_offset
            )
            .into_bytes(),
        );
        out
    }

    fn sample_pdf() -> Vec<u8> {
        build_pdf(
            &[
                &[&["Widget Handbook"], &["The widget turns on when", "you press the red button."]],
                &[&["Cleaning (weekly) keeps it running."]],
            ],
            Some("Widget Handbook 2024"),
        )
    }

    #[test]
    fn text_comes_out_of_a_real_pdf() {
        let document = parse_bytes(&sample_pdf(), Format::Pdf, &ParseLimits::default()).unwrap();
        assert_eq!(document.title.as_deref(), Some("Widget Handbook 2024"));
        let texts: Vec<&str> = document.blocks.iter().map(|block| block.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Widget Handbook",
                "The widget turns on when you press the red button.",
                "Cleaning (weekly) keeps it running."
            ]
        );
        assert!(document.blocks.iter().all(|block| block.kind == BlockKind::Paragraph));
    }

    #[test]
    fn title_falls_back_to_the_first_line() {
        let pdf = build_pdf(&[&[&["Quarterly report"], &["Sales went up."]]], None);
        let document = parse_bytes(&pdf, Format::Pdf, &ParseLimits::default()).unwrap();
        assert_eq!(document.title.as_deref(), Some("Quarterly report"));
    }

    #[test]
    fn page_limit_is_enforced() {
        let limits = ParseLimits { max_pdf_pages: 1, ..ParseLimits::default() };
        match parse_bytes(&sample_pdf(), Format::Pdf, &limits) {
            Err(ParseError::TooManyPages { pages: 2, limit: 1 }) => {}
            other => panic!("expected too many pages, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_pdfs_are_errors_not_panics() {
        let limits = ParseLimits::default();
        let valid = sample_pdf();
        let truncated = &valid[..valid.len() / 3];
        let mut garbage = b"%PDF-1.7\n".to_vec();
        garbage.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        let mut broken_xref = valid.clone();
        let at = broken_xref.len() - 20;
        broken_xref[at..at + 6].copy_from_slice(b"999999");
        for (name, bytes) in [
            ("truncated", truncated),
            ("garbage", &garbage[..]),
            ("not a pdf", b"hello, world"),
            ("xref", &broken_xref),
        ] {
            match parse_bytes(bytes, Format::Pdf, &limits) {
                Err(ParseError::Corrupt { format: "pdf", .. }) => {}
                // A damaged cross-reference table may be recoverable; then the text must be right.
                Ok(document) if name == "xref" => assert_eq!(document.blocks.len(), 3),
                other => panic!("{name}: expected corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_pdf_without_text_is_empty() {
        let pdf = build_pdf(&[&[]], None);
        assert!(matches!(parse_bytes(&pdf, Format::Pdf, &ParseLimits::default()), Err(ParseError::Empty)));
    }

    #[test]
    fn a_pdf_that_makes_the_extractor_panic_is_corrupt() {
        // pdf-extract panics on a page without a MediaBox; blanking it with spaces keeps the
        // cross-reference offsets right, so only the extractor sees the damage.
        let mut pdf = sample_pdf();
        let media_box = b"/MediaBox [0 0 612 792]";
        let mut blanked = 0;
        while let Some(at) = pdf.windows(media_box.len()).position(|window| window == media_box) {
            pdf[at..at + media_box.len()].fill(b' ');
            blanked += 1;
        }
        assert_eq!(blanked, 2);
        let error = parse_bytes(&pdf, Format::Pdf, &ParseLimits::default()).unwrap_err();
        assert!(
            matches!(&error, ParseError::Corrupt { format: "pdf", reason } if reason.contains("MediaBox")),
            "{error:?}"
        );
    }

    #[test]
    fn panics_become_corrupt_errors() {
        let error = guarded(|| -> u8 { panic!("boom") }).unwrap_err();
        assert!(matches!(&error, ParseError::Corrupt { format: "pdf", reason } if reason.contains("boom")));
    }
}
