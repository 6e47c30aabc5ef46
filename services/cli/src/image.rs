//! `cbir image get|rm|label`: one stored image at a time, over the
//! gateway's public gRPC API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cbir_api::v1 as pb;
use serde_json::json;

use crate::client::{connect, status_error};

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Show a stored image's metadata; optionally save its thumbnail.
    Get {
        id: u64,
        #[arg(long, short = 'c', default_value = "default")]
        collection: String,
        /// Write the thumbnail (a JPEG) to this file.
        #[arg(long)]
        thumbnail: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Delete images by id (they are gone from searches at once); fails
    /// when the collection lacked some of them.
    Rm {
        #[arg(required = true)]
        ids: Vec<u64>,
        #[arg(long, short = 'c', default_value = "default")]
        collection: String,
    },
    /// Set an image's label ("" clears it).
    Label {
        id: u64,
        label: String,
        #[arg(long, short = 'c', default_value = "default")]
        collection: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(url: &str, command: ImageCommand) -> anyhow::Result<ExitCode> {
    let mut client = connect(url).await?;
    match command {
        ImageCommand::Get {
            id,
            collection,
            thumbnail,
            json,
        } => {
            let img = client
                .get_image(pb::GetStoredImageRequest {
                    collection,
                    id,
                    include_thumbnail: thumbnail.is_some(),
                    ..Default::default()
                })
                .await
                .map_err(|s| status_error("get image", s))?
                .into_inner();
            if let Some(file) = thumbnail {
                std::fs::write(&file, &img.thumbnail)
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
            print_image(&img, json);
        }
        ImageCommand::Rm { ids, collection } => {
            let asked = ids.len() as u64;
            let deleted = client
                .delete_images(pb::DeleteRequest {
                    collection: collection.clone(),
                    ids,
                })
                .await
                .map_err(|s| status_error("delete images", s))?
                .into_inner()
                .deleted;
            println!("collection {collection}: {deleted} of {asked} images deleted");
            if deleted < asked {
                eprintln!(
                    "{} of the ids are not in collection {collection}",
                    asked - deleted
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        ImageCommand::Label {
            id,
            label,
            collection,
            json,
        } => {
            let img = client
                .update_label(pb::UpdateLabelRequest {
                    collection,
                    id,
                    label,
                })
                .await
                .map_err(|s| status_error("relabel", s))?
                .into_inner();
            print_image(&img, json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_image(img: &pb::StoredImage, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({
                "id": img.id,
                "collection": img.collection,
                "file_name": img.file_name,
                "path": img.path,
                "label": img.label,
                "predicted_class": img.predicted_class,
                "predicted_name": img.predicted_name,
                "created_at_ms": img.created_at_ms,
                "content_hash": img.content_hash,
            })
        );
        return;
    }
    println!("image {} of collection {}", img.id, img.collection);
    println!("  file name  {}", img.file_name);
    println!("  path       {}", img.path);
    println!("  label      {}", img.label);
    println!(
        "  predicted  {} {}",
        img.predicted_class, img.predicted_name
    );
    println!("  created    {} ms since 1970", img.created_at_ms);
    println!("  sha-256    {}", img.content_hash);
}
