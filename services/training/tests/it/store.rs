//! Concurrent writers on the training store (issue 13, item 1): job
//! inserts, updates, state transitions, curve points, orphan sweeps and
//! registry writes (register, activate, delete) at once, on SQLite and on
//! MariaDB. No write may fail, and every acknowledged write is there.

use cbir_api::v1 as pb;
use cbir_training::store::{JobRow, NewModel, Store};
use sea_orm::ConnectionTrait;

const WRITERS: usize = 8;
/// The message of jobs an orphan sweep failed.
const SWEPT: &str = "test sweep";
const JOBS_PER_WRITER: usize = 6;

fn job(id: String) -> JobRow {
    JobRow {
        job: pb::Job {
            id,
            name: "m".into(),
            state: pb::JobState::Queued as i32,
            message: "queued".into(),
            params: Some(pb::TrainingParams::default()),
            progress: Some(pb::JobProgress::default()),
            ..Default::default()
        },
        dataset_dir: "/tmp/none".into(),
    }
}

fn point(i: u64) -> pb::CurvePoint {
    pb::CurvePoint {
        iteration: i,
        epoch: 1,
        elapsed_seconds: i as f64,
        loss: 1.0 / (i as f32 + 1.0),
        train_accuracy: 0.5,
        validation_accuracy: f32::NAN,
    }
}

fn model(name: &str, version: &str, bytes: usize) -> NewModel {
    NewModel {
        meta: pb::RegisteredModel {
            model: Some(pb::ModelRef {
                name: name.into(),
                version: version.into(),
            }),
            trained_by: "test".into(),
            ..Default::default()
        },
        weights: (0..bytes).map(|i| (i % 251) as u8).collect(),
    }
}

/// One writer: its jobs through their life (insert, updates with curve
/// points, running, succeeded), one model registered, activated, and all
/// but the last deleted again. A concurrent orphan sweep may fail a
/// running job first: then it stays failed.
async fn writer(store: std::sync::Arc<Store>, w: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for j in 0..JOBS_PER_WRITER {
        let id = format!("job-{w}-{j}");
        store
            .insert_job(&job(id.clone()))
            .await
            .expect("insert job");
        assert!(store
            .transition(&id, pb::JobState::Queued, pb::JobState::Running, "running")
            .await
            .expect("transition"));
        // As the runner holds it (a sweep since is overwritten by the next
        // update, as a live runner's progress would).
        let mut row = job(id.clone()).job;
        row.state = pb::JobState::Running as i32;
        for step in 0..4u64 {
            row.message = format!("step {step}");
            if let Some(p) = row.progress.as_mut() {
                p.iteration = step;
            }
            store.update_job(&row).await.expect("update job");
            store
                .add_curve(&id, &[point(step * 2), point(step * 2 + 1)])
                .await
                .expect("curve");
        }
        store
            .transition(&id, pb::JobState::Running, pb::JobState::Succeeded, "done")
            .await
            .expect("transition");
        let name = format!("model{w}");
        let version = (j + 1).to_string();
        store
            .register_model(&model(&name, &version, 300_000))
            .await
            .expect("register");
        let r = pb::ModelRef {
            name: name.clone(),
            version: version.clone(),
        };
        store.set_active(&r).await.expect("activate");
        if j > 0 {
            // Replaced as the active model by the line above.
            let prev = pb::ModelRef {
                name,
                version: j.to_string(),
            };
            store.delete_model(&prev).await.expect("delete model");
        }
        ids.push(id);
    }
    ids
}

async fn concurrent_writes(url: &str) {
    let store = std::sync::Arc::new(Store::connect(url).await.expect("connect"));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(store.clone(), w)))
        .collect();
    // A restarting replica's sweeps of orphaned jobs at the same time.
    let sweeper = tokio::spawn({
        let store = store.clone();
        async move {
            for _ in 0..20 {
                store.fail_orphans(SWEPT).await.expect("sweep");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    });
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.expect("writer"));
    }
    sweeper.await.expect("sweeper");
    // A second connection (another replica) reads everything back.
    let other = Store::connect(url).await.expect("reconnect");
    for id in &ids {
        let j = other.job(id).await.expect("job").job;
        let outcome = (pb::JobState::try_from(j.state).ok(), j.message.as_str());
        assert!(
            matches!(
                outcome,
                (Some(pb::JobState::Succeeded), "done") | (Some(pb::JobState::Failed), SWEPT)
            ),
            "{id}: {outcome:?}"
        );
        let curve = other.curve(id).await.expect("curve");
        assert_eq!(curve.len(), 8, "{id}: every curve point once");
    }
    let models = other.models().await.expect("models");
    for w in 0..WRITERS {
        let last = pb::ModelRef {
            name: format!("model{w}"),
            version: JOBS_PER_WRITER.to_string(),
        };
        let m = other.model(&last).await.expect("the last model stays");
        assert_eq!(m.weights_bytes, 300_000);
        assert_eq!(other.weights(&last).await.expect("weights").len(), 300_000);
    }
    assert_eq!(
        models.iter().filter(|m| m.active).count(),
        1,
        "exactly one active model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_store_writes_on_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    concurrent_writes(&format!(
        "sqlite://{}",
        dir.path().join("training.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_store_writes_on_mariadb() {
    let base = std::env::var("CBIR_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let admin = sea_orm::Database::connect(format!("{base}/mysql"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "MariaDB at {base} is not reachable ({e}): scripts/test.sh starts it; \
                 or set CBIR_TEST_MYSQL_URL"
            )
        });
    let name = format!("cbir_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    concurrent_writes(&format!("{base}/{name}")).await;
    admin
        .execute_unprepared(&format!("DROP DATABASE {name}"))
        .await
        .expect("drop database");
}
