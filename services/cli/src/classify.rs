use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cbir_api::v1 as pb;
use cbir_api::v1::embed_result::Outcome;
use serde_json::json;

/// Images per Embed call.
const CHUNK: usize = 32;

pub async fn run(url: &str, images: &[PathBuf], as_json: bool) -> anyhow::Result<ExitCode> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
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
    for chunk in images.chunks(CHUNK) {
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
            client
                .embed(pb::EmbedRequest {
                    images: inputs,
                    priority: pb::Priority::Interactive as i32,
                    include_probabilities: false,
                })
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
