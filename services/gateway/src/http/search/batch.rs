//! `POST /api/search/batch`: several `image` parts, or JSON naming stored
//! images, with options applied to every query.

use super::*;

#[derive(Serialize)]
pub(super) struct BatchJson {
    items: Vec<BatchItemJson>,
}

/// One query's answer: its search answer, or why it failed.
#[derive(Serialize)]
pub(super) struct BatchItemJson {
    file_name: Option<String>,
    id: Option<u64>,
    response: Option<SearchJson>,
    error: Option<String>,
}

/// A batch search's answer as the REST API and `cbir search --json` give
/// it: each item with its file name or stored id.
pub fn search_batch_json(items: Vec<(Option<String>, Option<u64>, pb::SearchBatchItem)>) -> Value {
    let items = items
        .into_iter()
        .map(|(file_name, id, item)| batch_item(file_name, id, Ok(item)))
        .collect();
    serde_json::to_value(BatchJson { items }).unwrap_or(Value::Null)
}

fn batch_item(
    file_name: Option<String>,
    id: Option<u64>,
    item: std::result::Result<pb::SearchBatchItem, String>,
) -> BatchItemJson {
    let (response, error) = match item {
        Err(e) => (None, Some(e)),
        Ok(pb::SearchBatchItem {
            response: Some(r), ..
        }) => (Some(SearchJson::from(r)), None),
        Ok(pb::SearchBatchItem { error: Some(e), .. }) => (None, Some(e.message)),
        Ok(_) => (None, Some("the query went unanswered".into())),
    };
    BatchItemJson {
        file_name,
        id,
        response,
        error,
    }
}

/// A batch query as read: what names it, and its search or why it cannot
/// be sent (an image part over the size limit fails only its item).
struct BatchQuery {
    file_name: Option<String>,
    id: Option<u64>,
    query: std::result::Result<pb::search_request::Query, String>,
}

pub(super) async fn search_batch(
    State(gw): State<AppState>,
    Query(params): Query<Vec<(String, String)>>,
    _: Reader,
    request: Request,
) -> Result<Json<BatchJson>> {
    let (content_type, mut o) = content_type_and_options(&request, &params)?;
    let queries = if content_type.starts_with("multipart/form-data") {
        read_batch_multipart(&gw, request, &mut o).await?
    } else if content_type.starts_with("application/json") {
        read_batch_json(&gw, request, &mut o).await?
    } else {
        return Err(Error::UnsupportedMediaType(format!(
            "unsupported content type {content_type:?}: upload the query images as multipart/form-data (parts \"image\"), or send JSON {{\"queries\": [{{\"id\": N}}]}}"
        )));
    };
    let mut sent = Vec::new();
    for q in &queries {
        if let Ok(query) = &q.query {
            sent.push(o.request(query.clone())?);
        }
    }
    let mut answers = if sent.is_empty() {
        Vec::new().into_iter()
    } else {
        gw.search_batch(pb::SearchBatchRequest {
            queries: sent,
            collection: String::new(),
        })
        .await?
        .items
        .into_iter()
    };
    let items = queries
        .into_iter()
        .map(|q| {
            let item = match q.query {
                Err(e) => Err(e),
                Ok(_) => Ok(answers.next().unwrap_or_default()),
            };
            batch_item(q.file_name, q.id, item)
        })
        .collect();
    Ok(Json(BatchJson { items }))
}

/// Refuses a batch over `limits.max_batch_queries` while it is read.
fn check_batch_len(gw: &Gateway, n: usize) -> Result<()> {
    let max = gw.cfg.limits.max_batch_queries;
    if n > max {
        return Err(Error::InvalidArgument(format!(
            "a batch search holds at most {max} queries (limits.max_batch_queries): split it"
        )));
    }
    Ok(())
}

async fn read_batch_multipart(
    gw: &Gateway,
    request: Request,
    o: &mut Options,
) -> Result<Vec<BatchQuery>> {
    let limit = gw.cfg.limits.max_request_bytes;
    let mut mp = Multipart::from_request(request, &())
        .await
        .map_err(|e| Error::InvalidArgument(format!("bad multipart upload: {}", e.body_text())))?;
    let mut out = Vec::new();
    while let Some(mut field) = mp
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, limit))?
    {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            check_batch_len(gw, out.len() + 1)?;
            let file_name = field.file_name().map(str::to_string);
            let max = gw.cfg.limits.max_image_bytes;
            let query = match read_part(&mut field, max, limit).await? {
                Some(data) => Ok(pb::search_request::Query::Image(data)),
                None => Err(query_too_large(max).to_string()),
            };
            out.push(BatchQuery {
                file_name,
                id: None,
                query,
            });
        } else {
            let text = field.text().await.map_err(|e| multipart_error(&e, limit))?;
            o.apply(&name, &text)?;
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(
            "no image in the upload: send each query as a multipart part named \"image\"".into(),
        ));
    }
    Ok(out)
}

async fn read_batch_json(
    gw: &Gateway,
    request: Request,
    o: &mut Options,
) -> Result<Vec<BatchQuery>> {
    let limit = gw.cfg.limits.max_request_bytes;
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|e| body_error(&e, limit))?;
    let mut b: SearchBody = parse_json_content(&body)?;
    if b.image_id.is_some() {
        return Err(Error::InvalidArgument(
            "a batch names its stored images in \"queries\": [{\"id\": N}, ...], not \"image_id\""
                .into(),
        ));
    }
    let queries = b.queries.take().unwrap_or_default();
    if queries.is_empty() {
        return Err(Error::InvalidArgument(
            "no query: send \"queries\": [{\"id\": N}, ...] naming stored images".into(),
        ));
    }
    check_batch_len(gw, queries.len())?;
    b.apply(o);
    Ok(queries
        .into_iter()
        .map(|q| BatchQuery {
            file_name: None,
            id: Some(q.id),
            query: Ok(pb::search_request::Query::Stored(pb::StoredImageQuery {
                collection: q.collection,
                id: q.id,
                exclude_self: o.exclude_self,
            })),
        })
        .collect())
}
