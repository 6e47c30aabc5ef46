//! Translations between the proto messages and the index's own types.

use cbir_api::v1 as pb;
use tonic::Status;

use crate::index::{Collection, SearchRequest, SearchResult};
use crate::mem::{Expansion, Filter, Mode, Term};
use crate::store::{ImageFilter, Sort};

pub(super) fn collection_msg(alias: &str, c: &Collection) -> pb::Collection {
    pb::Collection {
        name: alias.to_string(),
        physical_name: c.row.name.clone(),
        model: Some(pb::ModelRef {
            name: c.row.model_name.clone(),
            version: c.row.model_version.clone(),
        }),
        dims: c.row.dims,
        count: c.mem.read().len() as u64,
        description: c.row.description.clone(),
        created_at_ms: c.row.created_at_ms,
    }
}

pub fn mode_from(m: i32) -> Result<Option<Mode>, Status> {
    match pb::SearchMode::try_from(m) {
        Ok(pb::SearchMode::Unspecified) => Ok(None),
        Ok(pb::SearchMode::Partition) => Ok(Some(Mode::Partition)),
        Ok(pb::SearchMode::Probe) => Ok(Some(Mode::Probe)),
        Ok(pb::SearchMode::Exact) => Ok(Some(Mode::Exact)),
        Ok(pb::SearchMode::Refined) => Ok(Some(Mode::Refined)),
        Err(_) => Err(Status::invalid_argument(format!("unknown search mode {m}"))),
    }
}

pub fn sort_from(s: i32) -> Result<Sort, Status> {
    match pb::ImageSort::try_from(s) {
        Ok(pb::ImageSort::Unspecified | pb::ImageSort::Time) => Ok(Sort::Time),
        Ok(pb::ImageSort::Name) => Ok(Sort::Name),
        Ok(pb::ImageSort::Label) => Ok(Sort::Label),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown sort {s}: use IMAGE_SORT_TIME, IMAGE_SORT_NAME or IMAGE_SORT_LABEL"
        ))),
    }
}

/// The listing's filter; no filter admits everything.
pub fn filter_from(f: Option<pb::ImageFilter>) -> ImageFilter {
    let f = f.unwrap_or_default();
    ImageFilter {
        labels_in: f.labels_in,
        labels_not_in: f.labels_not_in,
        path_prefix: f.path_prefix,
        created_from_ms: f.created_from_ms,
        created_to_ms: f.created_to_ms,
    }
}

pub fn mode_to(m: Mode) -> pb::SearchMode {
    match m {
        Mode::Partition => pb::SearchMode::Partition,
        Mode::Probe => pb::SearchMode::Probe,
        Mode::Exact => pb::SearchMode::Exact,
        Mode::Refined => pb::SearchMode::Refined,
    }
}

pub fn ranked_by(m: Mode) -> pb::RankedBy {
    match m {
        Mode::Partition | Mode::Probe | Mode::Exact => pb::RankedBy::Distance,
        Mode::Refined => pb::RankedBy::RefinedScore,
    }
}

/// A search as the domain takes it; the filter and mode checked on the way.
pub(super) fn search_request(r: pb::IndexSearchRequest) -> Result<SearchRequest, Status> {
    let f = r.filter.unwrap_or_default();
    Ok(SearchRequest {
        mode: mode_from(r.mode)?,
        collection: r.collection,
        vector: r.vector,
        predicted_class: (r.predicted_class >= 0).then_some(r.predicted_class),
        top_k: r.top_k as usize,
        min_similarity: r.min_similarity,
        exclude_id: (r.exclude_id != 0).then_some(r.exclude_id),
        model: r
            .model
            .filter(|m| !m.name.is_empty())
            .map(|m| (m.name, m.version)),
        filter: Filter {
            labels_in: f.labels_in,
            labels_not_in: f.labels_not_in,
            path_prefix: f.path_prefix,
            created_from_ms: f.created_from_ms,
            created_to_ms: f.created_to_ms,
        },
        offset: r.offset as usize,
        expansion: match (r.expansion_only, r.expansion.is_empty()) {
            (true, true) => Expansion::TermsOnly,
            (false, true) => Expansion::Own,
            (false, false) => Expansion::Given(r.expansion.into_iter().map(term_from).collect()),
            (true, false) => {
                return Err(Status::invalid_argument(
                    "a search asks for its expansion terms (expansion_only) or gives them \
                     (expansion), not both",
                ))
            }
        },
    })
}

fn term_from(t: pb::ExpansionTerm) -> Term {
    Term {
        id: t.id,
        rank: t.rank,
        weight: t.weight,
        vector: t.vector,
    }
}

fn term_to(t: Term) -> pb::ExpansionTerm {
    pb::ExpansionTerm {
        id: t.id,
        rank: t.rank,
        weight: t.weight,
        vector: t.vector,
    }
}

pub(super) fn search_response(res: SearchResult) -> pb::IndexSearchResponse {
    pb::IndexSearchResponse {
        hits: res
            .hits
            .into_iter()
            .map(|h| pb::SearchHit {
                id: h.id,
                file_name: h.meta.file_name().to_string(),
                path: h.meta.path().to_string(),
                label: h.meta.label().to_string(),
                distance: h.distance,
                similarity: h.similarity,
                partition: h.partition,
                content_hash: h.meta.content_hash().into_owned(),
                created_at_ms: h.meta.created_at_ms,
                score: h.score,
            })
            .collect(),
        has_more: res.has_more,
        ranked_by: ranked_by(res.mode) as i32,
        stats: Some(pb::SearchStats {
            partitions_searched: res.stats.partitions_searched,
            partitions_total: res.stats.partitions_total,
            vectors_scanned: res.stats.vectors_scanned,
            vectors_total: res.stats.vectors_total,
            took_us: res.took_us,
        }),
        mode: mode_to(res.mode) as i32,
        expansion: res.terms.into_iter().map(term_to).collect(),
        expansion_k: res.expansion_k as u32,
    }
}

/// One failed query of a batch, with the code a single search would answer.
pub(super) fn batch_error(status: &Status) -> pb::IndexSearchBatchItem {
    pb::IndexSearchBatchItem {
        response: None,
        error: Some(pb::ItemError {
            code: status.code() as i32,
            message: status.message().to_string(),
        }),
    }
}
