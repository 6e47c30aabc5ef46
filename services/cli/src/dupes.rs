//! `cbir dupes COLLECTION`: groups a collection's near-duplicate images
//! over the gateway's public gRPC API, following the run with a progress
//! bar, prints the groups, and optionally keeps the first (oldest) image
//! of each group and deletes the others.

use std::process::ExitCode;

use cbir_api::v1 as pb;
use serde_json::json;

use crate::client::{connect, status_error};

/// Ids per DeleteImages call (the gateway's limit per delete).
const DELETE_BATCH: usize = 10_000;

#[derive(clap::Args)]
pub struct DupesArgs {
    collection: String,
    /// Two images are near-duplicates when their similarity 1/(1+d) is at
    /// least this (0 to 1); the index's default when not given.
    #[arg(long)]
    min_similarity: Option<f32>,
    /// One JSON object: the run and its groups.
    #[arg(long)]
    json: bool,
    /// Keep the first (oldest) image of each group and delete the others
    /// (admin role); only with --yes.
    #[arg(long)]
    delete_others: bool,
    /// Confirms --delete-others.
    #[arg(long)]
    yes: bool,
}

fn member_json(m: &pb::DuplicateMember) -> serde_json::Value {
    let i = m.image.clone().unwrap_or_default();
    json!({
        "id": i.id,
        "file_name": i.file_name,
        "path": i.path,
        "label": i.label,
        "predicted_class": i.predicted_class,
        "created_at_ms": i.created_at_ms,
        "content_hash": i.content_hash,
        "similarity": m.similarity,
    })
}

pub async fn run(url: &str, args: DupesArgs) -> anyhow::Result<ExitCode> {
    if args.delete_others && !args.yes {
        anyhow::bail!(
            "--delete-others deletes every image of each group but the first (oldest): add --yes to confirm"
        );
    }
    let mut client = connect(url).await?;
    let operation_id = client
        .find_duplicates(pb::FindDuplicatesRequest {
            collection: args.collection.clone(),
            min_similarity: args.min_similarity.unwrap_or(0.0),
        })
        .await
        .map_err(|s| status_error("start finding near-duplicates", s))?
        .into_inner()
        .operation_id;
    let mut stream = client
        .watch_operation(pb::WatchOperationRequest {
            operation_id: operation_id.clone(),
        })
        .await
        .map_err(|s| status_error("follow the run", s))?
        .into_inner();
    let bar = crate::progress::bar(0, "[{bar:24}] {pos}/{len} images {per_sec} {msg}");
    let mut last = pb::OperationProgress::default();
    while let Some(p) = stream
        .message()
        .await
        .map_err(|s| status_error("follow the run", s))?
    {
        bar.set_length(p.total);
        bar.set_position(p.done);
        last = p;
    }
    bar.finish_and_clear();
    if last.state != pb::operation_progress::State::Succeeded as i32 {
        eprintln!("finding near-duplicates did not succeed: {}", last.message);
        return Ok(ExitCode::FAILURE);
    }
    let listed = client
        .list_duplicates(pb::ListDuplicatesRequest {
            collection: args.collection.clone(),
        })
        .await
        .map_err(|s| status_error("list the groups", s))?
        .into_inner();
    let others: Vec<u64> = listed
        .groups
        .iter()
        .flat_map(|g| g.members.iter().skip(1))
        .filter_map(|m| m.image.as_ref().map(|i| i.id))
        .collect();
    let deleted = if args.delete_others && !others.is_empty() {
        let mut deleted = 0;
        for chunk in others.chunks(DELETE_BATCH) {
            deleted += client
                .delete_images(pb::DeleteRequest {
                    collection: args.collection.clone(),
                    ids: chunk.to_vec(),
                })
                .await
                .map_err(|s| status_error("delete the others", s))?
                .into_inner()
                .deleted;
        }
        Some(deleted)
    } else {
        None
    };
    if args.json {
        println!(
            "{}",
            json!({
                "collection": args.collection,
                "operation_id": operation_id,
                "min_similarity": listed.min_similarity,
                "total_groups": listed.total_groups,
                "groups": listed.groups.iter().map(|g| json!({
                    "members": g.members.iter().map(member_json).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "deleted": deleted,
            })
        );
    } else {
        println!(
            "collection {}: {} groups of near-duplicates (similarity at least {:.3}){}",
            args.collection,
            listed.total_groups,
            listed.min_similarity,
            if (listed.groups.len() as u32) < listed.total_groups {
                format!(", the largest {} listed", listed.groups.len())
            } else {
                String::new()
            }
        );
        for (n, g) in listed.groups.iter().enumerate() {
            println!("group {} ({} images)", n + 1, g.members.len());
            for (k, m) in g.members.iter().enumerate() {
                let i = m.image.clone().unwrap_or_default();
                println!(
                    "  {} {:>8}  {:.3}  {}  {}{}",
                    if k == 0 { "keep" } else { "    " },
                    i.id,
                    m.similarity,
                    i.file_name,
                    i.path,
                    if i.label.is_empty() {
                        String::new()
                    } else {
                        format!("  [{}]", i.label)
                    }
                );
            }
        }
        if let Some(d) = deleted {
            println!(
                "deleted {d} of {} images, kept the first of each group",
                others.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
