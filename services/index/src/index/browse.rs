//! Browsing a collection: pages from the database in a stable order, and
//! the images per label from memory.

use super::Index;
use crate::error::{Error, Result};
use crate::store::browse::{Cursor, DEFAULT_PAGE_SIZE};
use crate::store::{ImageFilter, ListPage, ListQuery, Sort, MAX_PAGE_SIZE};

/// A page request as the API gives it.
#[derive(Debug, Clone)]
pub struct ListRequest {
    pub collection: String,
    pub sort: Sort,
    pub descending: bool,
    /// 0: the default page size.
    pub page_size: u32,
    /// Empty for the first page.
    pub cursor: String,
    pub filter: ImageFilter,
    pub include_thumbnail: bool,
}

/// How many images carry one label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelCount {
    pub label: String,
    pub count: u64,
}

impl Index {
    pub async fn list_images(&self, req: ListRequest) -> Result<ListPage> {
        let coll = self.resolve(&req.collection)?;
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(Error::InvalidArgument(format!(
                    "page_size is {n}, the limit is {MAX_PAGE_SIZE}: follow next_cursor for more"
                )))
            }
            n => n,
        };
        req.filter
            .check(self.limits.max_label_len, self.limits.max_path_len)?;
        let cursor = if req.cursor.is_empty() {
            None
        } else {
            Some(Cursor::decode(&req.cursor, req.sort, req.descending)?)
        };
        let q = ListQuery {
            sort: req.sort,
            descending: req.descending,
            page_size,
            cursor,
            filter: req.filter,
            include_thumbnail: req.include_thumbnail,
        };
        self.store.list_images(coll.row.id, &q).await
    }

    /// Images per label (`""`: unlabelled), most first, then by label; from
    /// memory, which holds what searches see.
    pub fn label_counts(&self, name: &str) -> Result<Vec<LabelCount>> {
        let coll = self.resolve(name)?;
        let counts = coll.mem.read().label_counts();
        let mut out: Vec<LabelCount> = counts
            .into_iter()
            .map(|(label, count)| LabelCount { label, count })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.label.cmp(&b.label)));
        Ok(out)
    }
}
