//! Cursor pagination: a page is "up to `limit` rows with ids after `after`". Ids sort by
//! creation time, so the cursor for the next page is the last id returned.

pub const MAX_LIMIT: i64 = 100;
pub const DEFAULT_LIMIT: i64 = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub after: Option<String>,
    pub limit: i64,
}

impl Default for Page {
    fn default() -> Self {
        Page { after: None, limit: DEFAULT_LIMIT }
    }
}

impl Page {
    /// `limit` clamped to 1..=100.
    pub fn new(after: Option<String>, limit: Option<i64>) -> Page {
        Page { after, limit: limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) }
    }

    /// Queries fetch one row more than asked, to know whether another page exists.
    pub(crate) fn limit_plus_one(&self) -> i64 {
        self.limit + 1
    }

    /// Cuts `rows` (fetched with `limit_plus_one`) to the page and returns the next cursor.
    pub fn finish<T>(&self, mut rows: Vec<T>, id: impl Fn(&T) -> &str) -> (Vec<T>, Option<String>) {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        if rows.len() > limit {
            rows.truncate(limit);
            let next = rows.last().map(|r| id(r).to_owned());
            (rows, next)
        } else {
            (rows, None)
        }
    }
}
