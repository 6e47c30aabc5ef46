//! SIGKILL of the training process in the middle of a job: after a restart
//! the job is failed with the reason, the registry holds only complete
//! models, and the service trains again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use cbir_api::v1::training_service_client::TrainingServiceClient;
use tonic::transport::Channel;

fn shared_data() -> PathBuf {
    let dir = std::env::var_os("CBIR_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(
        dir.join("flowers5").is_dir(),
        "no flowers5 under {}: set CBIR_SHARED_DATA",
        dir.display()
    );
    dir
}

fn weights() -> PathBuf {
    cbir_inference::test_weights_path()
}

/// `per_class` images of three flowers5 classes copied under `dest`.
fn subset(dest: &Path, per_class: usize) {
    for class in ["daisy", "rose", "tulip"] {
        let src = shared_data().join("flowers5").join(class);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        std::fs::create_dir_all(dest.join(class)).expect("mkdir");
        for f in files.into_iter().take(per_class) {
            std::fs::copy(&f, dest.join(class).join(f.file_name().expect("name"))).expect("copy");
        }
    }
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, port: u16) -> Service {
    Service(
        Command::new(env!("CARGO_BIN_EXE_cbir-training"))
            .env("TRAINING_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "TRAINING_DATABASE_URL",
                format!("sqlite://{}", dir.join("training.db").display()),
            )
            .env("TRAINING_DATA_DIR", dir.join("data"))
            .env("TRAINING_BASE_WEIGHTS", weights())
            .env(
                "TRAINING_ALLOWED_ROOTS",
                format!("[{:?}]", dir.display().to_string()),
            )
            // No inference or index here: the reconcile loop stays off.
            .env("TRAINING_RECONCILE_MS", "0")
            .env("TRAINING_INDEX_URL", "http://127.0.0.1:9")
            .env("TRAINING_THREADS", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cbir-training"),
    )
}

async fn client(port: u16) -> TrainingServiceClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ch) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("uri")
            .connect()
            .await
        {
            let mut c = TrainingServiceClient::new(ch).max_decoding_message_size(64 << 20);
            if c.list_models(pb::ListModelsRequest {}).await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "cbir-training did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn job(c: &mut TrainingServiceClient<Channel>, id: &str) -> pb::Job {
    c.get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .expect("job")
        .into_inner()
        .job
        .expect("job")
}

async fn submit(c: &mut TrainingServiceClient<Channel>, set: &Path, epochs: u32) -> pb::Job {
    c.submit_job(pb::SubmitJobRequest {
        name: "flowers".into(),
        dataset: Some(pb::submit_job_request::Dataset::ServerPath(
            set.display().to_string(),
        )),
        params: Some(pb::TrainingParams {
            epochs,
            head_epochs: 1,
            min_images_per_class: 5,
            augment_views: 1,
            batch_size: 8,
            early_stopping_patience: 100,
            ..Default::default()
        }),
        submitted_by: "test".into(),
    })
    .await
    .expect("submit")
    .into_inner()
    .job
    .expect("job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_with_its_process_is_failed_after_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let set = dir.path().join("set");
    subset(&set, 12);
    let p = port();
    let mut svc = spawn(dir.path(), p);
    let mut c = client(p).await;

    let j = submit(&mut c, &set, 100).await;
    // Kill it once it is training (past the feature extraction).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = job(&mut c, &j.id).await;
        if now.progress.as_ref().is_some_and(|p| p.iteration > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job never started training: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    svc.0.kill().expect("SIGKILL");
    svc.0.wait().expect("wait");

    let _svc = spawn(dir.path(), p);
    let mut c = client(p).await;
    let after = job(&mut c, &j.id).await;
    assert_eq!(after.state, pb::JobState::Failed as i32, "{after:?}");
    assert!(
        after.message.contains("stopped while the job was running"),
        "{after:?}"
    );
    // Only complete models: the pretrained one, active, with its weights.
    let models = c
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("models")
        .into_inner()
        .models;
    assert_eq!(models.len(), 1, "{models:?}");
    assert!(models[0].active);
    let mut s = c
        .download_model(pb::DownloadModelRequest {
            model: models[0].model.clone(),
        })
        .await
        .expect("download")
        .into_inner();
    let mut bytes = 0;
    while let Some(chunk) = s.message().await.expect("chunk") {
        bytes += chunk.data.len();
    }
    assert_eq!(bytes as u64, models[0].weights_bytes);
    assert_eq!(
        bytes as u64,
        std::fs::metadata(weights()).expect("weights").len()
    );

    // The service trains again after the crash.
    let j2 = submit(&mut c, &set, 1).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let now = job(&mut c, &j2.id).await;
        if now.state == pb::JobState::Succeeded as i32 {
            assert_eq!(now.model.as_ref().map(|m| m.version.as_str()), Some("1"));
            break;
        }
        assert!(
            now.state == pb::JobState::Queued as i32 || now.state == pb::JobState::Running as i32,
            "{now:?}"
        );
        assert!(Instant::now() < deadline, "the second job did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
