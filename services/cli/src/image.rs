//! `cbir image get|rm|label|ls`: one stored image at a time, and a
//! collection page by page, over the gateway's public gRPC API.

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
        /// Write the kept original (or its rendition) to this file.
        #[arg(long)]
        original: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List a collection's images, a page at a time (`--all`: every page).
    Ls {
        collection: String,
        #[arg(long, value_enum, default_value = "time")]
        sort: SortBy,
        /// Newest, last name or last label first.
        #[arg(long)]
        desc: bool,
        /// Only images with this label (repeat for several; "" = unlabelled).
        #[arg(long)]
        label: Vec<String>,
        /// Leave out images with this label (repeatable).
        #[arg(long)]
        not_label: Vec<String>,
        /// Only images whose stored path starts with this.
        #[arg(long, default_value = "")]
        path_prefix: String,
        /// Images per page, 1 to 500.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Start after this cursor (printed after a page that has more).
        #[arg(long, default_value = "")]
        cursor: String,
        /// Follow the cursor to the last page.
        #[arg(long)]
        all: bool,
        /// One JSON object per image and line.
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
            original,
            json,
        } => {
            let img = client
                .get_image(pb::GetStoredImageRequest {
                    collection,
                    id,
                    include_thumbnail: thumbnail.is_some(),
                    include_source: original.is_some(),
                })
                .await
                .map_err(|s| status_error("get image", s))?
                .into_inner();
            if let Some(file) = thumbnail {
                std::fs::write(&file, &img.thumbnail)
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
            if let Some(file) = original {
                if img.source_image.is_empty() {
                    anyhow::bail!(
                        "image {id} of collection {} has no kept original: only its thumbnail (--thumbnail) is stored",
                        img.collection
                    );
                }
                std::fs::write(&file, &img.source_image)
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
            print_image(&img, json);
        }
        ImageCommand::Ls {
            collection,
            sort,
            desc,
            label,
            not_label,
            path_prefix,
            limit,
            cursor,
            all,
            json,
        } => {
            let req = pb::ListImagesRequest {
                collection,
                sort: sort.proto() as i32,
                descending: desc,
                page_size: limit,
                cursor,
                filter: Some(pb::ImageFilter {
                    labels_in: label,
                    labels_not_in: not_label,
                    path_prefix,
                    ..Default::default()
                }),
                include_thumbnail: false,
            };
            list(&mut client, req, all, json).await?;
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

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SortBy {
    Time,
    Name,
    Label,
}

impl SortBy {
    fn proto(self) -> pb::ImageSort {
        match self {
            SortBy::Time => pb::ImageSort::Time,
            SortBy::Name => pb::ImageSort::Name,
            SortBy::Label => pb::ImageSort::Label,
        }
    }
}

/// Prints a page (or with `all`, every page from the request's cursor on).
async fn list(
    client: &mut crate::client::Client,
    mut req: pb::ListImagesRequest,
    all: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut shown = 0u64;
    loop {
        let page = client
            .list_images(req.clone())
            .await
            .map_err(|s| status_error("list images", s))?
            .into_inner();
        for img in &page.images {
            if as_json {
                println!("{}", image_json(img));
            } else {
                println!(
                    "{:>8}  {:>13}  {:<20}  {}",
                    img.id, img.created_at_ms, img.label, img.path
                );
            }
        }
        shown += page.images.len() as u64;
        if page.next_cursor.is_empty() || !all {
            if !as_json {
                eprintln!("{shown} of {} images", page.total);
                if !page.next_cursor.is_empty() {
                    eprintln!("more: --cursor {} (or --all)", page.next_cursor);
                }
            }
            return Ok(());
        }
        req.cursor = page.next_cursor;
    }
}

fn image_json(img: &pb::StoredImage) -> serde_json::Value {
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
        "has_original": img.has_source,
    })
}

fn print_image(img: &pb::StoredImage, as_json: bool) {
    if as_json {
        println!("{}", image_json(img));
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
