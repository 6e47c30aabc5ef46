//! The same photo uploaded again through REST (issue 13, item 5): the
//! answer says it existed (`created: false`, its id), and the stored path,
//! file name and label stay unless the upload says `?replace=true`.

use serde_json::{json, Value};

use crate::system::{shared_data, System};

async fn upload(http: &reqwest::Client, url: &str, name: &str, data: &[u8]) -> Value {
    let form = reqwest::multipart::Form::new().part(
        "files",
        reqwest::multipart::Part::bytes(data.to_vec())
            .file_name(name.to_string())
            .mime_str("image/jpeg")
            .expect("mime"),
    );
    let r = http.post(url).multipart(form).send().await.expect("upload");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["results"][0]["error"], "", "{v}");
    v["results"][0].clone()
}

/// (file name, path, label) of the best hit for stored image `id`.
async fn stored(http: &reqwest::Client, base: &str, id: u64) -> (Value, Value, Value) {
    let v: Value = http
        .post(format!("{base}/api/search"))
        .json(&json!({"collection": "re", "image_id": id, "top_k": 1}))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    let h = &v["results"][0];
    assert_eq!(h["id"], id, "{v}");
    (
        h["file_name"].clone(),
        h["path"].clone(),
        h["label"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reupload_keeps_the_stored_entry_unless_replace() {
    let sys = System::start(|_| {}).await;
    let http = reqwest::Client::new();
    let base = sys.url();
    let photo = std::fs::read(
        std::fs::read_dir(shared_data().join("flowers5/daisy"))
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .min()
            .expect("a daisy"),
    )
    .expect("read");
    let first = upload(
        &http,
        &format!("{base}/api/collections/re/images?create=true"),
        "alice/daisy/mine.jpg",
        &photo,
    )
    .await;
    assert_eq!(first["created"], true);
    let id = first["id"].as_u64().expect("id");

    let again = upload(
        &http,
        &format!("{base}/api/collections/re/images"),
        "mallory/weeds/renamed.jpg",
        &photo,
    )
    .await;
    assert_eq!(
        (again["id"].as_u64(), &again["created"]),
        (Some(id), &json!(false))
    );
    assert_eq!(
        stored(&http, &base, id).await,
        (
            json!("mine.jpg"),
            json!("alice/daisy/mine.jpg"),
            json!("daisy")
        )
    );

    let replaced = upload(
        &http,
        &format!("{base}/api/collections/re/images?replace=true"),
        "bob/bellis/perennis.jpg",
        &photo,
    )
    .await;
    assert_eq!(
        (replaced["id"].as_u64(), &replaced["created"]),
        (Some(id), &json!(false))
    );
    assert_eq!(
        stored(&http, &base, id).await,
        (
            json!("perennis.jpg"),
            json!("bob/bellis/perennis.jpg"),
            json!("bellis")
        )
    );
    let v: Value = http
        .get(format!("{base}/api/collections/re"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(v["count"], 1, "{v}");
    sys.shutdown().await;
}
