//! End users as subjects of data-protection requests: who a request is about, and which of the
//! tenant's conversations belong to or mention them. Exports and erasures both resolve their
//! subject here, so they always agree on what "everything about this person" is.
//!
//! A conversation belongs to a subject when its visitor id or verified identity is theirs, and
//! mentions a subject when one of its stored messages contains their email address (compared
//! case-insensitively) or phone number (compared by digits: leading zeros dropped, and a
//! number of at least nine digits matches one that ends with it, so `07700 900123` and
//! `+44 7700 900123` are the same number). Email addresses and phone numbers are found in the
//! text with the recognisers of [`crate::redact`], reading the tenant's stored messages page by
//! page (so such a lookup takes time in proportion to the tenant's transcripts).

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::redact::{self, PiiKind};
use crate::{storage, Runtime};

/// Messages read per page while looking for mentions.
const SCAN_PAGE: i64 = 500;
const SUBJECT_HASH_PURPOSE: &str = "data-subject";

/// Who a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The widget's visitor id (or one the client chose).
    VisitorId(String),
    /// The host site's verified user id.
    Identity(String),
    /// An email address seen in conversations.
    Email(String),
    /// A phone number seen in conversations.
    Phone(String),
}

impl Subject {
    /// Checks and normalises a subject given by a caller: emails lowercased, phone numbers
    /// reduced to their digits.
    pub fn new(kind: &str, value: &str) -> Result<Self> {
        let value = value.trim();
        let field = format!("subject.{kind}");
        if value.is_empty() || value.chars().count() > 320 || value.chars().any(char::is_control) {
            return Err(Error::invalid(field, "must be 1 to 320 characters without control characters"));
        }
        match kind {
            "visitor_id" => Ok(Subject::VisitorId(value.to_owned())),
            "identity" => Ok(Subject::Identity(value.to_owned())),
            "email" => {
                let found = redact::find(value, PiiKind::Email);
                if found.len() != 1 || found[0] != value {
                    return Err(Error::invalid(field, "must be one email address"));
                }
                Ok(Subject::Email(value.to_lowercase()))
            }
            "phone" => {
                let allowed = |c: char| c.is_ascii_digit() || " +-().".contains(c);
                let digits = phone_digits(value);
                if !value.chars().all(allowed) || !(7..=15).contains(&digits.len()) {
                    return Err(Error::invalid(field, "must be a phone number of 7 to 15 digits"));
                }
                Ok(Subject::Phone(digits))
            }
            _ => Err(Error::invalid("subject", "must name one of visitor_id, identity, email or phone")),
        }
    }

    /// `visitor_id`, `identity`, `email` or `phone`.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::VisitorId(_) => "visitor_id",
            Subject::Identity(_) => "identity",
            Subject::Email(_) => "email",
            Subject::Phone(_) => "phone",
        }
    }

    /// The normalised value.
    pub fn value(&self) -> &str {
        match self {
            Subject::VisitorId(value) | Subject::Identity(value) | Subject::Email(value) | Subject::Phone(value) => {
                value
            }
        }
    }

    /// A keyed hash of the subject within its tenant, stored with an export instead of the
    /// identifier: exports about the same subject can be told apart without keeping who it was.
    pub(crate) fn hash(&self, runtime: &Runtime, tenant_id: Uuid) -> String {
        let message = format!("{tenant_id}/{}/{}", self.kind(), self.value());
        hex::encode(runtime.secrets().sign(SUBJECT_HASH_PURPOSE, message.as_bytes()))
    }

    /// Whether `text` mentions this subject (emails and phone numbers only).
    pub fn mentioned_in(&self, text: &str) -> bool {
        match self {
            Subject::Email(email) => {
                redact::find(text, PiiKind::Email).iter().any(|found| found.to_lowercase() == *email)
            }
            Subject::Phone(digits) => {
                redact::find(text, PiiKind::Phone).iter().any(|found| same_phone(&phone_digits(found), digits))
            }
            Subject::VisitorId(_) | Subject::Identity(_) => false,
        }
    }
}

fn phone_digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

/// Phone numbers compare by digits without leading zeros; a number of at least nine digits
/// also matches a longer one ending with it (a trunk prefix against a country code).
fn same_phone(left: &str, right: &str) -> bool {
    let (left, right) = (left.trim_start_matches('0'), right.trim_start_matches('0'));
    let (short, long) = if left.len() <= right.len() { (left, right) } else { (right, left) };
    short == long || (short.len() >= 9 && long.ends_with(short))
}

/// The tenant's conversations that belong to or mention the subject, oldest first.
pub async fn conversations_of(runtime: &Runtime, tenant_id: Uuid, subject: &Subject) -> Result<Vec<Uuid>> {
    let mut connection = runtime.database().pool().acquire().await?;
    let mut found = BTreeSet::new();
    match subject {
        Subject::VisitorId(visitor_id) => {
            found.extend(storage::erasure::conversations_by_visitor(&mut connection, tenant_id, visitor_id).await?);
        }
        Subject::Identity(identity) => {
            found.extend(storage::erasure::conversations_by_identity(&mut connection, tenant_id, identity).await?);
        }
        Subject::Email(_) | Subject::Phone(_) => {
            let mut after = None;
            loop {
                let page = storage::erasure::message_texts(&mut connection, tenant_id, after, SCAN_PAGE).await?;
                let Some(last) = page.last().map(|(id, _, _)| *id) else { break };
                for (_, conversation_id, text) in &page {
                    if !found.contains(conversation_id) && subject.mentioned_in(text) {
                        found.insert(*conversation_id);
                    }
                }
                if (page.len() as i64) < SCAN_PAGE {
                    break;
                }
                after = Some(last);
            }
        }
    }
    Ok(found.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_validated_and_normalised() {
        assert_eq!(
            Subject::new("email", " Jane.Doe@Example.com ").unwrap(),
            Subject::Email("jane.doe@example.com".into())
        );
        assert_eq!(Subject::new("phone", "+44 (0)7700 900-123").unwrap().value(), "4407700900123");
        assert!(Subject::new("email", "not an address").is_err());
        assert!(Subject::new("email", "a@example.com and b@example.com").is_err());
        assert!(Subject::new("phone", "call me").is_err());
        assert!(Subject::new("phone", "12").is_err());
        assert!(Subject::new("visitor_id", "").is_err());
        assert!(Subject::new("shoe_size", "42").is_err());
    }

    #[test]
    fn mentions_are_found_by_normalised_comparison() {
        let email = Subject::new("email", "jane.doe@example.com").unwrap();
        assert!(email.mentioned_in("write to JANE.DOE@example.com please"));
        assert!(!email.mentioned_in("write to john.doe@example.com please"));
        let phone = Subject::new("phone", "+44 7700 900123").unwrap();
        assert!(phone.mentioned_in("my number is 07700 900123"));
        assert!(phone.mentioned_in("call +44 7700 900 123"));
        assert!(!phone.mentioned_in("call +44 7700 900124"));
        assert!(!Subject::new("visitor_id", "v_123456789").unwrap().mentioned_in("v_123456789"));
    }
}
