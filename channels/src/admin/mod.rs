//! The admin API under `/admin/v1`: wire types (DTOs) and handlers that authenticate, call a
//! runtime operation and translate its result. No business rule lives here.

pub mod agents;
pub mod analytics;
pub mod audit;
pub mod conversations;
pub mod documents;
pub mod erasures;
pub mod exports;
pub mod keys;
pub mod provider_keys;
pub mod retention;
pub mod secrets;
pub mod telephony;
pub mod tenants;
pub mod webhooks;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Timestamps on the wire are RFC 3339 in UTC.
pub(crate) fn timestamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// Declares a page-of-items response type for the OpenAPI document.
macro_rules! page_type {
    ($name:ident, $item:ty) => {
        #[derive(Debug, serde::Serialize, utoipa::ToSchema)]
        pub struct $name {
            pub items: Vec<$item>,
            /// Pass as `cursor` to get the next page; absent on the last page.
            pub next_cursor: Option<String>,
        }

        impl $name {
            pub fn from_page<T>(page: parley_runtime::page::Page<T>, convert: impl FnMut(T) -> $item) -> Self {
                let page = page.map(convert);
                Self { items: page.items, next_cursor: page.next_cursor }
            }
        }
    };
}
pub(crate) use page_type;
