//! The gateways' indexing jobs kept by the index service (issue 13, item
//! 6): saved, read back by any caller, failed once their lease passes,
//! bounded, and bad saves refused.

use cbir_api::v1 as pb;
use pb::operation_progress::State;
use tonic::Code;

use crate::both_backends;
use crate::service::Server;

fn job(id: &str, state: State, started: i64) -> pb::IndexJob {
    pb::IndexJob {
        id: id.into(),
        collection: "photos".into(),
        path: "/images/photos".into(),
        state: state as i32,
        done: 3,
        total: 10,
        failures: vec![pb::FailedFile {
            path: "a.jpg".into(),
            reason: "not an image".into(),
        }],
        started_at_ms: started,
        ..Default::default()
    }
}

async fn jobs_kept(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    let save = |j: pb::IndexJob, lease_ms: u64| pb::SaveIndexJobRequest {
        job: Some(j),
        lease_ms,
    };
    c.save_index_job(save(job("run-1", State::Running, 1), 1_000))
        .await
        .expect("save");
    let got = c
        .load_index_job(pb::LoadIndexJobRequest { id: "run-1".into() })
        .await
        .expect("load")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(got, job("run-1", State::Running, 1));

    // No save within the lease: answered failed, with the reason.
    tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;
    let got = c
        .load_index_job(pb::LoadIndexJobRequest { id: "run-1".into() })
        .await
        .expect("load")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(got.state, State::Failed as i32);
    assert!(
        got.message.contains("gateway running this job stopped"),
        "{}",
        got.message
    );
    assert_eq!(got.done, 3, "its progress stays");
    // Its runner was only slow: the next save makes it running again.
    c.save_index_job(save(job("run-1", State::Running, 1), 60_000))
        .await
        .expect("save");
    let got = c
        .load_index_job(pb::LoadIndexJobRequest { id: "run-1".into() })
        .await
        .expect("load")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(got.state, State::Running as i32);

    // Finished jobs beyond the newest 100 go; running ones stay.
    for i in 0..105 {
        c.save_index_job(save(
            job(&format!("done-{i:03}"), State::Succeeded, 100 + i),
            60_000,
        ))
        .await
        .expect("save");
    }
    let list = c
        .list_index_jobs(pb::ListIndexJobsRequest {})
        .await
        .expect("list")
        .into_inner()
        .jobs;
    let ids: Vec<&str> = list.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(list.len(), 101, "{ids:?}");
    assert_eq!(ids[0], "done-104", "newest first");
    assert_eq!(ids[99], "done-005");
    assert_eq!(ids[100], "run-1");

    // Refused: no job, a bad id, a lease out of range, an unknown id.
    let err = c
        .save_index_job(pb::SaveIndexJobRequest {
            job: None,
            lease_ms: 5_000,
        })
        .await
        .expect_err("no job");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .save_index_job(save(job("../x", State::Running, 1), 5_000))
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .save_index_job(save(job("j", State::Running, 1), 10))
        .await
        .expect_err("short lease");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let err = c
        .load_index_job(pb::LoadIndexJobRequest { id: "nope".into() })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await;
}
both_backends!(index_jobs_are_kept_leased_and_bounded, jobs_kept);
