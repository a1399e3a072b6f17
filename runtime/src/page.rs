//! Cursor pagination shared by every list operation.
//!
//! Ids are UUIDv7, so they sort by creation time; a cursor is the last id of the previous page,
//! wrapped so clients treat it as opaque.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

use crate::error::{Error, Result};

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<Uuid>,
}

impl PageRequest {
    /// Builds a request from the client's `limit` and `cursor`, bounded by the node's settings.
    pub fn new(limit: Option<u32>, cursor: Option<&str>, default_limit: u32, max_limit: u32) -> Result<Self> {
        let limit = limit.unwrap_or(default_limit);
        if limit == 0 || limit > max_limit {
            return Err(Error::invalid("limit", format!("must be between 1 and {max_limit}")));
        }
        let after = match cursor {
            None | Some("") => None,
            Some(cursor) => {
                Some(decode_cursor(cursor).ok_or_else(|| Error::invalid("cursor", "is not a cursor this API issued"))?)
            }
        };
        Ok(Self { limit, after })
    }

    /// The number of rows to fetch: one more than the page, to learn whether another follows.
    pub(crate) fn fetch_limit(&self) -> i64 {
        i64::from(self.limit) + 1
    }
}

/// One page of results and the cursor for the next, if any.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Trims the extra row fetched by `fetch_limit` and derives the next cursor from the last item.
    pub(crate) fn from_rows(mut rows: Vec<T>, request: &PageRequest, id_of: impl Fn(&T) -> Uuid) -> Self {
        let has_more = rows.len() > request.limit as usize;
        rows.truncate(request.limit as usize);
        let next_cursor = if has_more { rows.last().map(|row| encode_cursor(id_of(row))) } else { None };
        Page { items: rows, next_cursor }
    }

    pub fn map<U>(self, function: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(function).collect(), next_cursor: self.next_cursor }
    }
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{id}"))
}

fn decode_cursor(cursor: &str) -> Option<Uuid> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    Uuid::parse_str(text.strip_prefix("v1:")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_rejects_garbage() {
        let id = Uuid::now_v7();
        let cursor = encode_cursor(id);
        assert_eq!(PageRequest::new(Some(5), Some(&cursor), 50, 200).unwrap().after, Some(id));
        assert!(PageRequest::new(None, Some("nonsense!"), 50, 200).is_err());
        assert!(PageRequest::new(Some(0), None, 50, 200).is_err());
        assert!(PageRequest::new(Some(201), None, 50, 200).is_err());
        assert_eq!(PageRequest::new(None, None, 50, 200).unwrap().limit, 50);
    }

    #[test]
    fn page_trims_extra_row() {
        let request = PageRequest::new(Some(2), None, 50, 200).unwrap();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let page = Page::from_rows(ids.clone(), &request, |id| *id);
        assert_eq!(page.items.len(), 2);
        assert_eq!(decode_cursor(page.next_cursor.as_deref().unwrap()), Some(ids[1]));
        let page = Page::from_rows(ids[..2].to_vec(), &request, |id| *id);
        assert!(page.next_cursor.is_none());
    }
}
