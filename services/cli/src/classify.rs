use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cbir_api::v1 as pb;
use cbir_api::v1::embed_result::Outcome;
use serde_json::json;

/// Images per Embed call, and encoded bytes per call (the service accepts
/// 64 MiB messages by default).
const CHUNK: usize = 32;
const CHUNK_BYTES: u64 = 48 << 20;

/// Groups files into calls of at most CHUNK images and about CHUNK_BYTES.
fn chunks(images: &[PathBuf]) -> Vec<&[PathBuf]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, p) in images.iter().enumerate() {
        let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        if i > start && (i - start >= CHUNK || bytes + size > CHUNK_BYTES) {
            out.push(&images[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < images.len() {
        out.push(&images[start..]);
    }
    out
}

pub async fn run(url: &str, images: &[PathBuf], as_json: bool) -> anyhow::Result<ExitCode> {
    let channel = cbir_common::tls::endpoint(url)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("bad inference URL {url}"))?
        .connect()
        .await
        .with_context(|| {
            format!("cannot reach the inference service at {url}: is `cbir up` running?")
        })?;
    let mut client = pb::inference_service_client::InferenceServiceClient::new(channel)
        .max_encoding_message_size(256 << 20)
        .max_decoding_message_size(64 << 20);
    let mut failed = 0usize;
    for chunk in chunks(images) {
        let mut inputs = Vec::new();
        let mut order = Vec::new();
        for path in chunk {
            let name = path.display().to_string();
            match std::fs::read(path) {
                Ok(data) => {
                    order.push((name.clone(), None));
                    inputs.push(pb::ImageInput { id: name, data });
                }
                Err(e) => order.push((name, Some(format!("cannot read the file: {e}")))),
            }
        }
        let mut results = if inputs.is_empty() {
            Vec::new()
        } else {
            let mut req = tonic::Request::new(pb::EmbedRequest {
                include_renditions: false,
                images: inputs,
                priority: pb::Priority::Interactive as i32,
                include_probabilities: false,
                ..Default::default()
            });
            // CBIR_INTERNAL_TOKEN, when the inference service asks for one.
            cbir_common::grpc::attach_internal_token(req.metadata_mut());
            client
                .embed(req)
                .await
                .map_err(|s| anyhow::anyhow!("inference failed: {}", s.message()))?
                .into_inner()
                .results
        }
        .into_iter();
        for (file, read_error) in order {
            let outcome = match read_error {
                Some(e) => Err(e),
                None => match results.next().and_then(|r| r.outcome) {
                    Some(Outcome::Embedding(e)) => Ok(e),
                    Some(Outcome::Error(e)) => Err(e.message),
                    None => Err("no result returned".into()),
                },
            };
            if outcome.is_err() {
                failed += 1;
            }
            print_one(&file, outcome, as_json);
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_one(file: &str, outcome: Result<pb::Embedding, String>, as_json: bool) {
    match (outcome, as_json) {
        (Ok(e), true) => {
            let top5: Vec<_> = e
                .top5
                .iter()
                .map(|c| json!({"index": c.index, "name": c.name, "probability": c.probability}))
                .collect();
            println!(
                "{}",
                json!({"file": file, "class_index": e.predicted_class, "class_name": e.predicted_name, "top5": top5})
            );
        }
        (Err(err), true) => println!("{}", json!({"file": file, "error": err})),
        (Ok(e), false) => {
            let top: Vec<String> = e
                .top5
                .iter()
                .map(|c| format!("{} ({:.1}%)", c.name, c.probability * 100.0))
                .collect();
            println!("{file}: {}", top.join(", "));
        }
        (Err(err), false) => println!("{file}: error: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_bound_count_and_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small: Vec<PathBuf> = (0..70)
            .map(|i| {
                let p = dir.path().join(format!("{i}.jpg"));
                std::fs::write(&p, b"x").expect("write");
                p
            })
            .collect();
        let sizes: Vec<usize> = chunks(&small).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![32, 32, 6]);
        // Two 30 MiB files never share a call; a missing file counts as empty.
        let big: Vec<PathBuf> = (0..2)
            .map(|i| {
                let p = dir.path().join(format!("big{i}.jpg"));
                std::fs::File::create(&p)
                    .and_then(|f| f.set_len(30 << 20))
                    .expect("big file");
                p
            })
            .chain([dir.path().join("missing.jpg")])
            .collect();
        let sizes: Vec<usize> = chunks(&big).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1, 2]);
        assert!(chunks(&[]).is_empty());
    }
}
