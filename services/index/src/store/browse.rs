//! Browsing a collection from the database: pages in time, name or label
//! order, with a keyset cursor (the last row's sort key and id) so that a
//! page starts where the previous one ended whatever was inserted or
//! deleted meanwhile, and the search filter as SQL.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbBackend, Value};

use super::{db_err, Store};
use crate::error::{Error, Result};

/// Most images on one page.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Images on a page when the caller names no size.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Thumbnails per page stop adding up once they pass this: a page of 500
/// large thumbnails would not fit one message.
const THUMBNAIL_BUDGET: usize = 4 << 20;
/// Most labels one filter may name (each side).
pub const MAX_FILTER_LABELS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// created_at_ms, then id.
    Time,
    /// file_name, then id.
    Name,
    /// label, then file_name, then id.
    Label,
}

impl Sort {
    fn tag(self) -> u8 {
        match self {
            Sort::Time => 1,
            Sort::Name => 2,
            Sort::Label => 3,
        }
    }

    fn from_tag(t: u8) -> Option<Self> {
        match t {
            1 => Some(Sort::Time),
            2 => Some(Sort::Name),
            3 => Some(Sort::Label),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sort::Time => "time",
            Sort::Name => "name",
            Sort::Label => "label",
        }
    }
}

/// Restricts a listing; every part that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFilter {
    /// The label is one of these ("" is unlabelled).
    pub labels_in: Vec<String>,
    pub labels_not_in: Vec<String>,
    /// The path starts with this (case-sensitive); empty: any.
    pub path_prefix: String,
    /// Created at or after; 0: no bound.
    pub created_from_ms: i64,
    /// Created before; 0: no bound.
    pub created_to_ms: i64,
}

impl ImageFilter {
    /// Refuses a filter that names too much or an empty time range.
    pub fn check(&self, max_label_len: usize, max_path_len: usize) -> Result<()> {
        for (field, labels) in [
            ("labels_in", &self.labels_in),
            ("labels_not_in", &self.labels_not_in),
        ] {
            if labels.len() > MAX_FILTER_LABELS {
                return Err(Error::InvalidArgument(format!(
                    "filter.{field} names {} labels, the limit is {MAX_FILTER_LABELS}",
                    labels.len()
                )));
            }
            if let Some(l) = labels.iter().find(|l| l.len() > max_label_len) {
                return Err(Error::InvalidArgument(format!(
                    "filter.{field} has a label of {} bytes, the limit is {max_label_len}",
                    l.len()
                )));
            }
        }
        if self.path_prefix.len() > max_path_len {
            return Err(Error::InvalidArgument(format!(
                "filter.path_prefix is {} bytes, the limit is {max_path_len}",
                self.path_prefix.len()
            )));
        }
        if self.created_from_ms < 0 || self.created_to_ms < 0 {
            return Err(Error::InvalidArgument(
                "filter.created_from_ms and created_to_ms are Unix milliseconds, 0 or more".into(),
            ));
        }
        if self.created_to_ms != 0 && self.created_to_ms <= self.created_from_ms {
            return Err(Error::InvalidArgument(format!(
                "filter.created_to_ms ({}) must be after created_from_ms ({})",
                self.created_to_ms, self.created_from_ms
            )));
        }
        Ok(())
    }

    /// The filter's conditions, each preceded by AND.
    fn sql(&self, backend: DbBackend, sql: &mut String, values: &mut Vec<Value>) {
        let mysql = backend == DbBackend::MySql;
        // MySQL compares text by its case- and space-insensitive collation;
        // filters match exactly, as the in-memory search does.
        let exact = |col: &str| {
            if mysql {
                format!("CAST({col} AS BINARY)")
            } else {
                col.to_string()
            }
        };
        if !self.labels_in.is_empty() {
            let marks = vec!["?"; self.labels_in.len()].join(",");
            sql.push_str(&format!(" AND {} IN ({marks})", exact("label")));
            values.extend(self.labels_in.iter().map(|l| Value::from(l.as_str())));
        }
        if !self.labels_not_in.is_empty() {
            let marks = vec!["?"; self.labels_not_in.len()].join(",");
            sql.push_str(&format!(" AND {} NOT IN ({marks})", exact("label")));
            values.extend(self.labels_not_in.iter().map(|l| Value::from(l.as_str())));
        }
        if !self.path_prefix.is_empty() {
            // Not LIKE: its wildcards and SQLite's case-insensitivity.
            let head = if mysql {
                "LEFT(path, ?)"
            } else {
                "substr(path, 1, ?)"
            };
            sql.push_str(&format!(" AND {} = ?", exact(head)));
            values.push((self.path_prefix.chars().count() as i64).into());
            values.push(self.path_prefix.as_str().into());
        }
        if self.created_from_ms > 0 {
            sql.push_str(" AND created_at_ms >= ?");
            values.push(self.created_from_ms.into());
        }
        if self.created_to_ms > 0 {
            sql.push_str(" AND created_at_ms < ?");
            values.push(self.created_to_ms.into());
        }
    }
}

/// Where a page starts: the sort key and id of the previous page's last
/// image, and the order it was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    sort: Sort,
    descending: bool,
    created_at_ms: i64,
    file_name: String,
    label: String,
    id: u64,
}

const CURSOR_VERSION: u8 = 1;

impl Cursor {
    /// The cursor of the page after `last`.
    pub fn after(sort: Sort, descending: bool, last: &ListedImage) -> Self {
        // Only the keys of the order travel: cursors stay short.
        let (name, label) = match sort {
            Sort::Time => ("", ""),
            Sort::Name => (last.file_name.as_str(), ""),
            Sort::Label => (last.file_name.as_str(), last.label.as_str()),
        };
        Self {
            sort,
            descending,
            created_at_ms: if sort == Sort::Time {
                last.created_at_ms
            } else {
                0
            },
            file_name: name.to_string(),
            label: label.to_string(),
            id: last.id,
        }
    }

    /// Opaque to callers: hex of a small binary record.
    pub fn encode(&self) -> String {
        let mut b = vec![CURSOR_VERSION, self.sort.tag(), u8::from(self.descending)];
        b.extend_from_slice(&self.created_at_ms.to_le_bytes());
        for s in [&self.file_name, &self.label] {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b.extend_from_slice(&self.id.to_le_bytes());
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Decodes a cursor and checks it was made for this order.
    pub fn decode(text: &str, sort: Sort, descending: bool) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(
                "the cursor is not one this service made: pass next_cursor of the previous page as it is, or none for the first page"
                    .into(),
            )
        };
        let bytes = decode_hex(text).ok_or_else(bad)?;
        let mut r = Reader(&bytes);
        if r.take(1).ok_or_else(bad)? != [CURSOR_VERSION] {
            return Err(bad());
        }
        let head = r.take(2).ok_or_else(bad)?;
        let made_for = Sort::from_tag(head[0]).ok_or_else(bad)?;
        let made_desc = match head[1] {
            0 => false,
            1 => true,
            _ => return Err(bad()),
        };
        if made_for != sort || made_desc != descending {
            let dir = |d: bool| if d { "descending" } else { "ascending" };
            return Err(Error::InvalidArgument(format!(
                "the cursor was made for sort {} {}, not {} {}: keep the sort and order while paging, or start again without a cursor",
                made_for.name(),
                dir(made_desc),
                sort.name(),
                dir(descending)
            )));
        }
        let created_at_ms = i64::from_le_bytes(r.array().ok_or_else(bad)?);
        let file_name = r.string().ok_or_else(bad)?;
        let label = r.string().ok_or_else(bad)?;
        let id = u64::from_le_bytes(r.array().ok_or_else(bad)?);
        if !r.0.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            sort,
            descending,
            created_at_ms,
            file_name,
            label,
            id,
        })
    }

    /// The condition "after this cursor in its order", preceded by AND.
    fn sql(&self, sql: &mut String, values: &mut Vec<Value>) {
        let op = if self.descending { "<" } else { ">" };
        let id = self.id as i64;
        match self.sort {
            Sort::Time => {
                // The first comparison alone bounds the index range.
                sql.push_str(&format!(
                    " AND created_at_ms {op}= ? AND (created_at_ms {op} ? OR (created_at_ms = ? AND id {op} ?))"
                ));
                let t = self.created_at_ms;
                values.extend([t.into(), t.into(), t.into(), id.into()]);
            }
            Sort::Name => {
                sql.push_str(&format!(
                    " AND file_name {op}= ? AND (file_name {op} ? OR (file_name = ? AND id {op} ?))"
                ));
                let n = self.file_name.as_str();
                values.extend([n.into(), n.into(), n.into(), id.into()]);
            }
            Sort::Label => {
                sql.push_str(&format!(
                    " AND label {op}= ? AND (label {op} ? OR (label = ? AND (file_name {op} ? OR (file_name = ? AND id {op} ?))))"
                ));
                let (l, n) = (self.label.as_str(), self.file_name.as_str());
                values.extend([l.into(), l.into(), l.into(), n.into(), n.into(), id.into()]);
            }
        }
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn string(&mut self) -> Option<String> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// One page request, checked by the caller (`page_size` 1 to the limit).
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub sort: Sort,
    pub descending: bool,
    pub page_size: u32,
    pub cursor: Option<Cursor>,
    pub filter: ImageFilter,
    pub include_thumbnail: bool,
}

/// An image as a listing shows it: no feature, no source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImage {
    pub id: u64,
    pub predicted_class: i32,
    pub content_hash: String,
    pub file_name: String,
    pub path: String,
    pub label: String,
    pub created_at_ms: i64,
    pub thumbnail: Option<Vec<u8>>,
    pub has_source: bool,
}

#[derive(Debug, Clone)]
pub struct ListPage {
    pub images: Vec<ListedImage>,
    /// Empty on the last page.
    pub next_cursor: String,
    /// Images matching the filter in the whole collection.
    pub total: u64,
}

impl ListQuery {
    /// The statement of one page (one row more than the page, to tell
    /// whether another follows).
    fn page_sql(&self, backend: DbBackend, collection_id: i64) -> (String, Vec<Value>) {
        let mut sql = String::from(
            "SELECT id, predicted_class, content_hash, file_name, path, label, created_at_ms FROM images WHERE collection_id = ?",
        );
        let mut values: Vec<Value> = vec![collection_id.into()];
        self.filter.sql(backend, &mut sql, &mut values);
        if let Some(c) = &self.cursor {
            c.sql(&mut sql, &mut values);
        }
        let dir = if self.descending { "DESC" } else { "ASC" };
        let keys: &[&str] = match self.sort {
            Sort::Time => &["created_at_ms", "id"],
            Sort::Name => &["file_name", "id"],
            Sort::Label => &["label", "file_name", "id"],
        };
        let order: Vec<String> = keys.iter().map(|k| format!("{k} {dir}")).collect();
        sql.push_str(&format!(" ORDER BY {} LIMIT ?", order.join(", ")));
        values.push(i64::from(self.page_size + 1).into());
        (sql, values)
    }
}

impl Store {
    /// One page of a collection's images in the query's order.
    #[tracing::instrument(name = "db.list_images", skip_all)]
    pub async fn list_images(&self, collection_id: i64, q: &ListQuery) -> Result<ListPage> {
        let (sql, values) = q.page_sql(self.backend, collection_id);
        let rows = self
            .db
            .query_all(self.stmt(&sql, values))
            .await
            .map_err(db_err("listing images"))?;
        let mut images = rows
            .iter()
            .map(listed_from_row)
            .collect::<Result<Vec<_>>>()?;
        let mut more = images.len() > q.page_size as usize;
        images.truncate(q.page_size as usize);
        self.attach_blobs(&mut images, q.include_thumbnail).await?;
        if q.include_thumbnail {
            let mut bytes = 0;
            let keep = images
                .iter()
                .position(|i| {
                    bytes += i.thumbnail.as_ref().map_or(0, Vec::len);
                    bytes > THUMBNAIL_BUDGET
                })
                // The first image always, however large.
                .map_or(images.len(), |p| p.max(1));
            more |= keep < images.len();
            images.truncate(keep);
        }
        let next_cursor = match images.last() {
            Some(last) if more => Cursor::after(q.sort, q.descending, last).encode(),
            _ => String::new(),
        };
        let total = self.count_matching(collection_id, &q.filter).await?;
        Ok(ListPage {
            images,
            next_cursor,
            total,
        })
    }

    /// Whether each image keeps a source, and its thumbnail when asked.
    async fn attach_blobs(&self, images: &mut [ListedImage], thumbnails: bool) -> Result<()> {
        if images.is_empty() {
            return Ok(());
        }
        let marks = vec!["?"; images.len()].join(",");
        let cols = if thumbnails {
            "image_id, source_bytes, thumbnail"
        } else {
            "image_id, source_bytes"
        };
        let rows = self
            .db
            .query_all(self.stmt(
                &format!("SELECT {cols} FROM image_blobs WHERE image_id IN ({marks})"),
                images.iter().map(|i| Value::from(i.id as i64)).collect(),
            ))
            .await
            .map_err(db_err("reading thumbnails"))?;
        let mut by_id: HashMap<u64, (i64, Option<Vec<u8>>)> = HashMap::new();
        for r in rows {
            let id: i64 = r.try_get("", "image_id").map_err(db_err("image_id"))?;
            let n: i64 = r
                .try_get("", "source_bytes")
                .map_err(db_err("source_bytes"))?;
            let thumb = if thumbnails {
                Some(r.try_get("", "thumbnail").map_err(db_err("thumbnail"))?)
            } else {
                None
            };
            by_id.insert(id as u64, (n, thumb));
        }
        for img in images {
            if let Some((n, thumb)) = by_id.remove(&img.id) {
                img.has_source = n > 0;
                img.thumbnail = thumb;
            } else if thumbnails {
                img.thumbnail = Some(Vec::new());
            }
        }
        Ok(())
    }

    /// Images of the collection the filter admits.
    pub async fn count_matching(&self, collection_id: i64, filter: &ImageFilter) -> Result<u64> {
        let mut sql = String::from("SELECT COUNT(*) AS n FROM images WHERE collection_id = ?");
        let mut values: Vec<Value> = vec![collection_id.into()];
        filter.sql(self.backend, &mut sql, &mut values);
        let row = self
            .db
            .query_one(self.stmt(&sql, values))
            .await
            .map_err(db_err("counting images"))?;
        Ok(row
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()
            .map_err(db_err("count"))?
            .unwrap_or(0) as u64)
    }

    /// The database's plan of a page's statement (EXPLAIN QUERY PLAN on
    /// SQLite, EXPLAIN on MySQL), one line per step: tests hold it to an
    /// index read without a sort.
    pub async fn explain_list(&self, collection_id: i64, q: &ListQuery) -> Result<Vec<String>> {
        let (sql, values) = q.page_sql(self.backend, collection_id);
        let prefix = match self.backend {
            DbBackend::Sqlite => "EXPLAIN QUERY PLAN ",
            _ => "EXPLAIN ",
        };
        let rows = self
            .db
            .query_all(self.stmt(&format!("{prefix}{sql}"), values))
            .await
            .map_err(db_err("explaining a listing"))?;
        let cols: &[&str] = match self.backend {
            DbBackend::Sqlite => &["detail"],
            _ => &["key", "Extra"],
        };
        Ok(rows
            .iter()
            .map(|r| {
                cols.iter()
                    .map(|c| {
                        let v: Option<String> = r.try_get("", c).ok().flatten();
                        format!("{c}={}", v.unwrap_or_default())
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect())
    }
}

fn listed_from_row(r: &sea_orm::QueryResult) -> Result<ListedImage> {
    Ok(ListedImage {
        id: r.try_get::<i64>("", "id").map_err(db_err("id"))? as u64,
        predicted_class: r.try_get("", "predicted_class").map_err(db_err("class"))?,
        content_hash: r.try_get("", "content_hash").map_err(db_err("hash"))?,
        file_name: r.try_get("", "file_name").map_err(db_err("file_name"))?,
        path: r.try_get("", "path").map_err(db_err("path"))?,
        label: r.try_get("", "label").map_err(db_err("label"))?,
        created_at_ms: r.try_get("", "created_at_ms").map_err(db_err("created"))?,
        thumbnail: None,
        has_source: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(id: u64) -> ListedImage {
        ListedImage {
            id,
            predicted_class: 3,
            content_hash: String::new(),
            file_name: "é|b.jpg".into(),
            path: String::new(),
            label: "chat".into(),
            created_at_ms: 1_700_000_000_123,
            thumbnail: None,
            has_source: false,
        }
    }

    #[test]
    fn cursors_round_trip_and_name_their_order() {
        for sort in [Sort::Time, Sort::Name, Sort::Label] {
            for desc in [false, true] {
                let c = Cursor::after(sort, desc, &last(42));
                let text = c.encode();
                assert_eq!(Cursor::decode(&text, sort, desc).unwrap(), c);
                let other = if sort == Sort::Name {
                    Sort::Time
                } else {
                    Sort::Name
                };
                let e = Cursor::decode(&text, other, desc).unwrap_err();
                assert!(e.to_string().contains("cursor was made for sort"), "{e}");
                assert!(Cursor::decode(&text, sort, !desc).is_err());
            }
        }
    }

    #[test]
    fn damaged_cursors_are_refused() {
        let good = Cursor::after(Sort::Label, false, &last(7)).encode();
        for bad in [
            "",
            "zz",
            "abc",
            &good[..good.len() - 2],
            &format!("{good}00"),
            &format!("02{}", &good[2..]),
            "ünï",
        ] {
            let e = Cursor::decode(bad, Sort::Label, false).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn filters_are_bounded() {
        let f = ImageFilter {
            labels_in: vec!["a".into(); MAX_FILTER_LABELS + 1],
            ..Default::default()
        };
        assert!(f.check(512, 4096).is_err());
        let f = ImageFilter {
            created_from_ms: 10,
            created_to_ms: 5,
            ..Default::default()
        };
        assert!(f.check(512, 4096).is_err());
        assert!(ImageFilter::default().check(512, 4096).is_ok());
    }
}
