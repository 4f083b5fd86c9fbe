//! Pagination and search of admin listings.

use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;

const MAX_LIMIT: usize = 10_000;

/// `limit`, `offset` and `search`, shared by the listings.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1–10000; all items when absent.
    pub limit: Option<usize>,
    /// Items to skip.
    pub offset: Option<usize>,
    /// Case-insensitive substring of the name.
    pub search: Option<String>,
    /// Accepted for Bifrost compatibility; reads always come from memory.
    pub from_memory: Option<bool>,
}

/// One page of a listing, with what the envelope reports.
pub struct Page<T> {
    pub items: Vec<T>,
    pub total_count: usize,
    pub limit: Option<usize>,
    pub offset: usize,
}

impl<T> Page<T> {
    /// The same page with each item made into a view.
    pub fn map<U>(self, view: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(view).collect(),
            total_count: self.total_count,
            limit: self.limit,
            offset: self.offset,
        }
    }
}

impl PageQuery {
    /// Whether `name` passes the search filter.
    pub fn matches(&self, name: &str) -> bool {
        match &self.search {
            Some(s) if !s.is_empty() => name.to_lowercase().contains(&s.to_lowercase()),
            _ => true,
        }
    }

    /// Cuts the page out of `items` (already filtered and ordered).
    pub fn page<T>(&self, items: Vec<T>) -> Result<Page<T>, ApiError> {
        if let Some(limit) = self.limit {
            if limit == 0 || limit > MAX_LIMIT {
                return Err(ApiError::InvalidRequest(format!(
                    "limit: must be between 1 and {MAX_LIMIT}"
                )));
            }
        }
        if self.search.as_ref().is_some_and(|s| s.len() > 256) {
            return Err(ApiError::InvalidRequest(
                "search: must be at most 256 bytes".into(),
            ));
        }
        let total_count = items.len();
        let offset = self.offset.unwrap_or(0);
        let items = items
            .into_iter()
            .skip(offset)
            .take(self.limit.unwrap_or(usize::MAX))
            .collect();
        Ok(Page {
            items,
            total_count,
            limit: self.limit,
            offset,
        })
    }
}

/// A page of a listing: the items under the resource's plural name, with what the envelope
/// reports (the request's `limit` and `offset`, and the count before paging).
macro_rules! page_response {
    ($(#[$doc:meta])* $name:ident, $items:ident, $view:ty) => {
        $(#[$doc])*
        #[derive(Debug, serde::Serialize, utoipa::ToSchema)]
        pub struct $name {
            pub $items: Vec<$view>,
            /// Items in this page.
            pub count: usize,
            /// Items that match the filters, over all pages.
            pub total_count: usize,
            pub limit: Option<usize>,
            pub offset: usize,
        }

        impl From<$crate::http::page::Page<$view>> for $name {
            fn from(page: $crate::http::page::Page<$view>) -> Self {
                $name {
                    count: page.items.len(),
                    $items: page.items,
                    total_count: page.total_count,
                    limit: page.limit,
                    offset: page.offset,
                }
            }
        }
    };
}
pub(crate) use page_response;
