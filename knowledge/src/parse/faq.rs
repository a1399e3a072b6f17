//! FAQ parsing: question-and-answer pairs from a CSV file (with `question` and `answer`
//! columns) or a JSON file (a list of `{"question", "answer"}` objects, or `{"entries": [...]}`),
//! each becoming one [`BlockKind::Faq`] block.
//!
//! Owns: the accepted shapes of FAQ files and the messages explaining what is wrong with one.

use serde_json::Value;

use super::{Block, BlockKind, ParseError, ParsedDocument};

/// One FAQ block from a question and its answer, both trimmed. Inner line breaks of the
/// answer are kept: answers are often short step lists.
pub(super) fn entry(question: &str, answer: &str) -> Block {
    Block::new(BlockKind::Faq { question: question.trim().to_string() }, answer.trim())
}

/// Names accepted for the question and answer columns, compared without case.
const QUESTION_COLUMNS: [&str; 2] = ["question", "q"];
const ANSWER_COLUMNS: [&str; 2] = ["answer", "a"];

/// Spreadsheets export CSV with a comma, or with a semicolon where the comma is the decimal
/// separator; tab-separated exports are common too. The first delimiter whose header row has
/// both columns wins.
const DELIMITERS: [u8; 3] = [b',', b';', b'\t'];

pub(super) fn parse_csv(text: &str) -> Result<ParsedDocument, ParseError> {
    for delimiter in DELIMITERS {
        if let Some(blocks) = parse_csv_with(text, delimiter)? {
            if blocks.is_empty() {
                return Err(ParseError::InvalidFaq("the CSV has no row with both a question and an answer".into()));
            }
            return Ok(ParsedDocument { title: None, blocks });
        }
    }
    Err(ParseError::InvalidFaq("the CSV needs a header row with a `question` and an `answer` column".into()))
}

/// The entries read with one delimiter, or `None` if the header row does not name both
/// columns with it. Rows with an empty question or answer are skipped.
fn parse_csv_with(text: &str, delimiter: u8) -> Result<Option<Vec<Block>>, ParseError> {
    let mut reader =
        csv::ReaderBuilder::new().delimiter(delimiter).flexible(true).has_headers(true).from_reader(text.as_bytes());
    let headers =
        reader.headers().map_err(|error| ParseError::InvalidFaq(format!("the CSV cannot be read: {error}")))?;
    let find = |names: &[&str]| {
        headers.iter().position(|header| names.iter().any(|name| header.trim().eq_ignore_ascii_case(name)))
    };
    let (Some(question_column), Some(answer_column)) = (find(&QUESTION_COLUMNS), find(&ANSWER_COLUMNS)) else {
        return Ok(None);
    };
    let mut blocks = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|error| ParseError::InvalidFaq(format!("the CSV cannot be read: {error}")))?;
        let question = record.get(question_column).unwrap_or_default();
        let answer = record.get(answer_column).unwrap_or_default();
        if question.trim().is_empty() || answer.trim().is_empty() {
            continue;
        }
        blocks.push(entry(question, answer));
    }
    Ok(Some(blocks))
}

pub(super) fn parse_json(text: &str) -> Result<ParsedDocument, ParseError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| ParseError::InvalidFaq(format!("the file is not valid JSON: {error}")))?;
    let entries = match &value {
        Value::Array(entries) => entries,
        Value::Object(object) => match object.get("entries") {
            Some(Value::Array(entries)) => entries,
            _ => return Err(shape_error()),
        },
        _ => return Err(shape_error()),
    };
    let mut blocks = Vec::new();
    for (index, item) in entries.iter().enumerate() {
        let field = |name: &str| item.get(name).and_then(Value::as_str);
        let (Some(question), Some(answer)) = (field("question"), field("answer")) else {
            return Err(ParseError::InvalidFaq(format!(
                "entry {} must be an object with a `question` and an `answer` string",
                index + 1
            )));
        };
        if question.trim().is_empty() || answer.trim().is_empty() {
            continue;
        }
        blocks.push(entry(question, answer));
    }
    if blocks.is_empty() {
        return Err(ParseError::InvalidFaq("the JSON has no entry with both a question and an answer".into()));
    }
    Ok(ParsedDocument { title: None, blocks })
}

fn shape_error() -> ParseError {
    ParseError::InvalidFaq(
        "the JSON must be a list of {\"question\", \"answer\"} objects, or an object with such a list in `entries`"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::{parse as parse_bytes, Format, ParseLimits};
    use super::*;

    fn faq(question: &str, answer: &str) -> Block {
        Block::new(BlockKind::Faq { question: question.into() }, answer)
    }

    fn parse_as(bytes: &[u8], format: Format) -> Result<ParsedDocument, ParseError> {
        parse_bytes(bytes, format, &ParseLimits::default())
    }

    #[test]
    fn csv_with_header_row() {
        let csv = "\u{feff}ID,Question,Answer\n1,How do I log in?,\"Use your email,\nthen the code.\"\n2,,orphan\n3,Empty answer?,  \n\
                   4, Opening hours? , 9 to 5 \n";
        let document = parse_as(csv.as_bytes(), Format::FaqCsv).unwrap();
        assert_eq!(
            document.blocks,
            vec![faq("How do I log in?", "Use your email,\nthen the code."), faq("Opening hours?", "9 to 5")]
        );
    }

    #[test]
    fn csv_short_headers_and_semicolons() {
        let document = parse_as(b"q;a\nWhere is it?;In Paris\n", Format::FaqCsv).unwrap();
        assert_eq!(document.blocks, vec![faq("Where is it?", "In Paris")]);
        let document = parse_as(b"Q\tA\nTabbed?\tYes\n", Format::FaqCsv).unwrap();
        assert_eq!(document.blocks, vec![faq("Tabbed?", "Yes")]);
        // Windows-1252 exports decode like any text file.
        let document = parse_as(b"question,answer\nCaf\xe9?,Oui\n", Format::FaqCsv).unwrap();
        assert_eq!(document.blocks, vec![faq("Café?", "Oui")]);
    }

    #[test]
    fn csv_without_the_columns_or_rows_is_invalid() {
        let error = parse_as(b"title,body\nx,y\n", Format::FaqCsv).unwrap_err();
        assert!(matches!(&error, ParseError::InvalidFaq(message) if message.contains("header")), "{error:?}");
        let error = parse_as(b"question,answer\n,\n  ,x\n", Format::FaqCsv).unwrap_err();
        assert!(matches!(error, ParseError::InvalidFaq(_)), "{error:?}");
        assert_eq!(error.code(), "invalid_faq");
    }

    #[test]
    fn json_lists_and_entries_objects() {
        let list =
            br#"[{"question": "Price?", "answer": "Free.", "tags": ["x"]}, {"question": " ", "answer": "skip"}]"#;
        assert_eq!(parse_as(list, Format::FaqJson).unwrap().blocks, vec![faq("Price?", "Free.")]);
        let wrapped = br#"{"entries": [{"question": "Support?", "answer": "Write to us."}]}"#;
        assert_eq!(parse_as(wrapped, Format::FaqJson).unwrap().blocks, vec![faq("Support?", "Write to us.")]);
    }

    #[test]
    fn json_of_the_wrong_shape_is_invalid() {
        for bad in [
            &br#"{"question": "a", "answer": "b"}"#[..],
            br#"[{"q": "a", "a": "b"}]"#,
            br#"[{"question": "a", "answer": 3}]"#,
            br#"["just text"]"#,
            br#"[]"#,
            br#"42"#,
            br#"[{"question": "unterminated"#,
        ] {
            let error = parse_as(bad, Format::FaqJson).unwrap_err();
            assert!(matches!(error, ParseError::InvalidFaq(_)), "{}: {error:?}", String::from_utf8_lossy(bad));
        }
    }
}
