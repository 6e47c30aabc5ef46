//! `cbir search FILE...`: one file is a search, several are one batch
//! search (their images embedded together); filters and paging as options.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cbir_api::v1 as pb;

use crate::client::{connect, status_error};

/// What to search for and how.
#[derive(clap::Args)]
pub struct SearchArgs {
    /// Query image files; several are searched in one batch.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// How many results.
    #[arg(short = 'k', long = "top-k", default_value_t = 20)]
    pub top_k: u32,
    /// refined, probe, exact or partition; the service's default
    /// (refined) when left out.
    #[arg(long, default_value = "")]
    pub mode: String,
    #[arg(long, short = 'c', default_value = "default")]
    pub collection: String,
    /// Only images with this label (repeat for any of several; "" for
    /// unlabelled images).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// No images with this label (repeatable).
    #[arg(long = "not-label")]
    pub not_labels: Vec<String>,
    /// Only images whose stored path starts with this.
    #[arg(long, default_value = "")]
    pub path_prefix: String,
    /// Only images added at or after this time (RFC 3339 or Unix ms).
    #[arg(long)]
    pub since: Option<String>,
    /// Only images added before this time (RFC 3339 or Unix ms).
    #[arg(long)]
    pub until: Option<String>,
    /// Skip this many best results (the next page: offset + top-k).
    #[arg(long, default_value_t = 0)]
    pub offset: u32,
    #[arg(long)]
    pub json: bool,
}

impl SearchArgs {
    fn filter(&self) -> anyhow::Result<Option<pb::ImageFilter>> {
        let time = |flag: &str, v: &Option<String>| -> anyhow::Result<i64> {
            v.as_deref().map_or(Ok(0), |s| {
                cbir_common::time::parse_ms(s).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
            })
        };
        let f = pb::ImageFilter {
            labels_in: self.labels.clone(),
            labels_not_in: self.not_labels.clone(),
            path_prefix: self.path_prefix.clone(),
            created_from_ms: time("since", &self.since)?,
            created_to_ms: time("until", &self.until)?,
        };
        Ok((f != pb::ImageFilter::default()).then_some(f))
    }

    fn request(&self, data: Vec<u8>) -> anyhow::Result<pb::SearchRequest> {
        let mode =
            cbir_gateway::search::parse_mode(&self.mode).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(pb::SearchRequest {
            query: Some(pb::search_request::Query::Image(data)),
            collection: self.collection.clone(),
            top_k: self.top_k,
            mode: mode as i32,
            filter: self.filter()?,
            offset: self.offset,
            ..Default::default()
        })
    }
}

fn read(image: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(image).with_context(|| format!("cannot read {}", image.display()))
}

pub async fn run(url: &str, args: &SearchArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(url).await?;
    if let [image] = args.images.as_slice() {
        let r = client
            .search(args.request(read(image)?)?)
            .await
            .map_err(|s| status_error("search", s))?
            .into_inner();
        if args.json {
            println!("{}", cbir_gateway::http::search_json(r));
        } else {
            print_results(&r, args);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut queries = Vec::with_capacity(args.images.len());
    for image in &args.images {
        queries.push(args.request(read(image)?)?);
    }
    let items = client
        .search_batch(pb::SearchBatchRequest {
            queries,
            collection: args.collection.clone(),
        })
        .await
        .map_err(|s| status_error("batch search", s))?
        .into_inner()
        .items;
    let names: Vec<String> = args
        .images
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let (total, failed) = (
        items.len(),
        items.iter().filter(|i| i.response.is_none()).count(),
    );
    if args.json {
        let named = names
            .into_iter()
            .map(Some)
            .zip(items)
            .map(|(n, i)| (n, None, i));
        println!("{}", cbir_gateway::http::search_batch_json(named.collect()));
    } else {
        for (name, item) in names.iter().zip(&items) {
            println!("== {name}");
            match (&item.response, &item.error) {
                (Some(r), _) => print_results(r, args),
                (None, Some(e)) => println!("failed: {}", e.message),
                (None, None) => println!("failed: no answer"),
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("{failed} of {total} queries failed");
        ExitCode::from(2)
    })
}

fn print_results(r: &pb::SearchResponse, args: &SearchArgs) {
    if let Some(q) = &r.query {
        println!(
            "query: {} ({:.1}%), {} results in {:.1} ms",
            q.predicted_name,
            q.confidence * 100.0,
            r.results.len(),
            r.took_ms
        );
    }
    println!(
        "{:>4}  {:>7}  {:>8}  {:<20}  path",
        "rank", "similar", "distance", "label"
    );
    for h in &r.results {
        println!(
            "{:>4}  {:>6.1}%  {:>8.4}  {:<20}  {}",
            h.rank,
            h.similarity * 100.0,
            h.distance,
            h.label,
            if h.path.is_empty() {
                &h.file_name
            } else {
                &h.path
            }
        );
    }
    if r.has_more {
        println!(
            "more results follow: --offset {}",
            args.offset + r.results.len() as u32
        );
    }
}
