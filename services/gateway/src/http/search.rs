//! `POST /api/search`: a multipart upload (part `image`), a raw image body
//! with the options in the query string, or JSON naming a stored image.
//! `POST /api/search/batch` is in [`batch`].

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::Json;
use cbir_api::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::extract::{parse_json_content, Reader};
use super::ingest::{multipart_error, read_part};
use super::{AppState, Route};
use crate::error::{Error, Result};
use crate::gateway::Gateway;
use crate::search::{mode_name, parse_mode, ranked_by_name};

mod batch;

pub use batch::search_batch_json;

pub(super) fn routes() -> Vec<Route> {
    vec![
        ("/api/search", post(search)),
        ("/api/search/batch", post(batch::search_batch)),
    ]
}

#[derive(Serialize)]
struct SearchJson {
    results: Vec<HitJson>,
    query: Option<QueryJson>,
    stats: StatsJson,
    took_ms: f64,
    collection: String,
    mode: &'static str,
    /// What ordered the results: `distance` (closest first) or
    /// `refined_score` (refined mode: highest `score` first).
    ranked_by: &'static str,
    /// More results follow: ask again with offset + top_k.
    has_more: bool,
}

#[derive(Serialize)]
struct HitJson {
    /// 1-based place in the whole result list (offset included).
    rank: u32,
    id: u64,
    file_name: String,
    path: String,
    label: String,
    /// Query-to-image, in every mode.
    distance: f64,
    similarity: f64,
    /// What ordered the results (see `ranked_by`), higher first.
    score: f64,
    partition: i32,
    partition_name: String,
    created_at_ms: i64,
    thumbnail_url: String,
    original_url: Option<String>,
}

#[derive(Serialize)]
struct QueryJson {
    predicted_class: i32,
    predicted_name: String,
    confidence: f64,
    top5: Vec<ClassJson>,
}

#[derive(Serialize)]
struct ClassJson {
    index: i32,
    name: String,
    probability: f64,
}

#[derive(Serialize)]
struct StatsJson {
    partitions_searched: u32,
    partitions_total: u32,
    vectors_scanned: u64,
    vectors_total: u64,
}

/// Percent-encodes a path segment (collection names may hold spaces).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl From<pb::SearchResponse> for SearchJson {
    fn from(r: pb::SearchResponse) -> Self {
        let coll = encode_segment(&r.collection);
        let stats = r.stats.unwrap_or_default();
        Self {
            results: r
                .results
                .into_iter()
                .map(|h| HitJson {
                    thumbnail_url: format!("/api/collections/{coll}/images/{}/thumbnail", h.id),
                    // Uploads keep the file or its rendition; the route
                    // answers 404 for an image stored without one.
                    original_url: Some(format!("/api/collections/{coll}/images/{}/original", h.id)),
                    rank: h.rank,
                    created_at_ms: h.created_at_ms,
                    id: h.id,
                    file_name: h.file_name,
                    path: h.path,
                    label: h.label,
                    distance: f64::from(h.distance),
                    similarity: f64::from(h.similarity),
                    score: f64::from(h.score),
                    partition: h.partition,
                    partition_name: h.partition_name,
                })
                .collect(),
            query: r.query.map(|q| QueryJson {
                predicted_class: q.predicted_class,
                predicted_name: q.predicted_name,
                confidence: f64::from(q.confidence),
                top5: q
                    .top5
                    .into_iter()
                    .map(|c| ClassJson {
                        index: c.index,
                        name: c.name,
                        probability: f64::from(c.probability),
                    })
                    .collect(),
            }),
            stats: StatsJson {
                partitions_searched: stats.partitions_searched,
                partitions_total: stats.partitions_total,
                vectors_scanned: stats.vectors_scanned,
                vectors_total: stats.vectors_total,
            },
            took_ms: r.took_ms,
            collection: r.collection,
            mode: mode_name(r.mode),
            ranked_by: ranked_by_name(r.ranked_by),
            has_more: r.has_more,
        }
    }
}

/// A search's answer as the REST API and `cbir search --json` give it.
pub fn search_json(r: pb::SearchResponse) -> Value {
    serde_json::to_value(SearchJson::from(r)).unwrap_or(Value::Null)
}

/// A JSON search (`image_id`) or batch search (`queries`), with options.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    #[serde(alias = "id")]
    image_id: Option<u64>,
    queries: Option<Vec<StoredJson>>,
    #[serde(default)]
    collection: String,
    #[serde(default)]
    top_k: u32,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    min_similarity: f32,
    #[serde(default)]
    exclude_self: bool,
    /// The label is one of these ("" is unlabelled).
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    not_labels: Vec<String>,
    #[serde(default)]
    path_prefix: String,
    #[serde(default)]
    from_ms: i64,
    #[serde(default)]
    to_ms: i64,
    #[serde(default)]
    offset: u32,
}

/// A stored image as one query of a batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredJson {
    id: u64,
    /// Where the image is stored; the searched collection when empty.
    #[serde(default)]
    collection: String,
}

impl SearchBody {
    /// Sets the options the body gives over those of the query string.
    fn apply(self, o: &mut Options) {
        if !self.collection.is_empty() {
            o.req.collection = self.collection;
        }
        if self.top_k != 0 {
            o.req.top_k = self.top_k;
        }
        if !self.mode.is_empty() {
            o.mode = self.mode;
        }
        if self.min_similarity != 0.0 {
            o.req.min_similarity = self.min_similarity;
        }
        if self.offset != 0 {
            o.req.offset = self.offset;
        }
        let f = o.req.filter.get_or_insert_with(Default::default);
        f.labels_in.extend(self.labels);
        f.labels_not_in.extend(self.not_labels);
        if !self.path_prefix.is_empty() {
            f.path_prefix = self.path_prefix;
        }
        if self.from_ms != 0 {
            f.created_from_ms = self.from_ms;
        }
        if self.to_ms != 0 {
            f.created_to_ms = self.to_ms;
        }
        o.exclude_self |= self.exclude_self;
    }
}

fn parse_num<T: std::str::FromStr>(field: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("{field} must be a number, got {v:?}")))
}

/// A search request being read, and its mode by name.
#[derive(Default)]
struct Options {
    req: pb::SearchRequest,
    mode: String,
    exclude_self: bool,
}

impl Options {
    /// One option from the query string or a multipart text part; `label`
    /// and `not_label` may repeat.
    fn apply(&mut self, key: &str, value: &str) -> Result<()> {
        let filter = || -> pb::ImageFilter { pb::ImageFilter::default() };
        match key {
            "collection" => self.req.collection = value.to_string(),
            "top_k" => self.req.top_k = parse_num("top_k", value)?,
            "mode" => self.mode = value.to_string(),
            "min_similarity" => self.req.min_similarity = parse_num("min_similarity", value)?,
            "offset" => self.req.offset = parse_num("offset", value)?,
            "label" => self
                .req
                .filter
                .get_or_insert_with(filter)
                .labels_in
                .push(value.to_string()),
            "not_label" => self
                .req
                .filter
                .get_or_insert_with(filter)
                .labels_not_in
                .push(value.to_string()),
            "path_prefix" => {
                self.req.filter.get_or_insert_with(filter).path_prefix = value.to_string()
            }
            "from_ms" => {
                self.req.filter.get_or_insert_with(filter).created_from_ms =
                    parse_num("from_ms", value)?;
            }
            "to_ms" => {
                self.req.filter.get_or_insert_with(filter).created_to_ms =
                    parse_num("to_ms", value)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The search as asked, for a query.
    fn request(&self, query: pb::search_request::Query) -> Result<pb::SearchRequest> {
        let mut req = self.req.clone();
        req.mode = parse_mode(&self.mode)? as i32;
        req.query = Some(query);
        Ok(req)
    }
}

/// The request's content type (lower case) and the options of its query
/// string, which the body's own options then add to.
fn content_type_and_options(
    request: &Request,
    params: &[(String, String)],
) -> Result<(String, Options)> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut o = Options::default();
    for (k, v) in params {
        o.apply(k, v)?;
    }
    Ok((content_type, o))
}

async fn search(
    State(gw): State<AppState>,
    Query(params): Query<Vec<(String, String)>>,
    _: Reader,
    request: Request,
) -> Result<Json<SearchJson>> {
    let (content_type, mut o) = content_type_and_options(&request, &params)?;
    if content_type.starts_with("multipart/form-data") {
        read_multipart(&gw, request, &mut o).await?;
    } else if content_type.starts_with("application/json") {
        read_json(&gw, request, &mut o).await?;
    } else if content_type.starts_with("image/") || content_type == "application/octet-stream" {
        read_raw(&gw, request, &mut o).await?;
    } else {
        return Err(Error::UnsupportedMediaType(format!(
            "unsupported content type {content_type:?}: upload the image as multipart/form-data (part \"image\"), as a raw image/* body, or send JSON {{\"image_id\": N}}"
        )));
    }
    o.req.mode = parse_mode(&o.mode)? as i32;
    Ok(Json(gw.search(o.req).await?.into()))
}

async fn read_multipart(gw: &Gateway, request: Request, o: &mut Options) -> Result<()> {
    let limit = gw.cfg.limits.max_request_bytes;
    let mut mp = Multipart::from_request(request, &())
        .await
        .map_err(|e| Error::InvalidArgument(format!("bad multipart upload: {}", e.body_text())))?;
    while let Some(mut field) = mp
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, limit))?
    {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            let max = gw.cfg.limits.max_image_bytes;
            let data = read_part(&mut field, max, limit)
                .await?
                .ok_or_else(|| query_too_large(max))?;
            o.req.query = Some(pb::search_request::Query::Image(data));
        } else {
            let text = field.text().await.map_err(|e| multipart_error(&e, limit))?;
            o.apply(&name, &text)?;
        }
    }
    if o.req.query.is_none() {
        return Err(Error::InvalidArgument(
            "no image in the upload: send the query as a multipart part named \"image\"".into(),
        ));
    }
    Ok(())
}

async fn read_json(gw: &Gateway, request: Request, o: &mut Options) -> Result<()> {
    let limit = gw.cfg.limits.max_request_bytes;
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|e| body_error(&e, limit))?;
    let b: SearchBody = parse_json_content(&body)?;
    if b.queries.is_some() {
        return Err(Error::InvalidArgument(
            "\"queries\" is for POST /api/search/batch; a single search names one \"image_id\""
                .into(),
        ));
    }
    let id = b.image_id.ok_or_else(|| {
        Error::InvalidArgument(
            "a JSON search names a stored image: {\"image_id\": N}; upload an image as multipart/form-data instead".into(),
        )
    })?;
    b.apply(o);
    o.req.query = Some(pb::search_request::Query::Stored(pb::StoredImageQuery {
        collection: String::new(),
        id,
        exclude_self: o.exclude_self,
    }));
    Ok(())
}

async fn read_raw(gw: &Gateway, request: Request, o: &mut Options) -> Result<()> {
    let max = gw.cfg.limits.max_image_bytes;
    let body = axum::body::to_bytes(request.into_body(), max)
        .await
        .map_err(|e| {
            if crate::guard::timed_out(&e) {
                Error::ClientTimeout(format!("the upload stopped: {e}"))
            } else if crate::guard::caused_by::<http_body_util::LengthLimitError>(&e) {
                query_too_large(max)
            } else {
                Error::InvalidArgument(format!("cannot read the request body: {e}"))
            }
        })?;
    o.req.query = Some(pb::search_request::Query::Image(body.to_vec()));
    Ok(())
}

/// A query image over `limits.max_image_bytes`, found while reading it.
fn query_too_large(max: usize) -> Error {
    Error::TooLarge(format!(
        "the query image has more than {max} bytes; the limit is {max} bytes (limits.max_image_bytes)"
    ))
}

fn body_error(e: &BytesRejection, limit: usize) -> Error {
    let status = e.status();
    if crate::guard::timed_out(e) {
        return Error::ClientTimeout(format!("the upload stopped: {}", e.body_text()));
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Error::TooLarge(format!("the request is over the limit of {limit} bytes"))
    } else {
        Error::InvalidArgument(format!("cannot read the request body ({status})"))
    }
}
