use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use super::*;

/// A model stand-in: output feature[0] = first input byte, feature[1] = the
/// model's tag; optionally blocks each batch until the test lets it go.
struct Fake {
    tag: f32,
    log: Arc<Mutex<Vec<Vec<u8>>>>,
    gate: Option<Arc<Mutex<std_mpsc::Receiver<()>>>>,
    entered: Option<std_mpsc::Sender<()>>,
    meta: Arc<ModelMeta>,
}

fn meta(name: &str) -> Arc<ModelMeta> {
    Arc::new(ModelMeta {
        name: name.into(),
        version: "1".into(),
        architecture: "fake".into(),
        class_names: Arc::new(vec!["a".into(), "b".into()]),
        embedding_dim: 2,
        device: "cpu".into(),
        dtype: "f32".into(),
        backend: "fake".into(),
        source: "test".into(),
        weights_sha256: String::new(),
        loaded_at_ms: 0,
    })
}

impl Fake {
    fn new(tag: f32, log: Arc<Mutex<Vec<Vec<u8>>>>) -> Self {
        Self {
            tag,
            log,
            gate: None,
            entered: None,
            meta: meta(&format!("fake{tag}")),
        }
    }
}

impl Backend for Fake {
    fn infer(&mut self, inputs: &[&[u8]]) -> std::result::Result<Vec<RawOutput>, String> {
        if let Some(tx) = &self.entered {
            let _ = tx.send(());
        }
        if let Some(gate) = &self.gate {
            let _ = gate.lock().recv_timeout(Duration::from_secs(10));
        }
        if inputs.iter().any(|i| i[0] == 255) {
            panic!("poison input");
        }
        self.log.lock().push(inputs.iter().map(|i| i[0]).collect());
        Ok(inputs
            .iter()
            .map(|i| RawOutput {
                feature: vec![f32::from(i[0]), self.tag],
                probabilities: vec![0.5, 0.5],
            })
            .collect())
    }

    fn meta(&self) -> Arc<ModelMeta> {
        self.meta.clone()
    }
}

fn cfg(max_batch: usize, delay_us: u64) -> BatcherConfig {
    BatcherConfig {
        max_batch_size: max_batch,
        max_queue_delay_us: delay_us,
        preferred_batch_sizes: vec![],
        max_queue_interactive: 64,
        max_queue_bulk: 64,
        workers: 1,
    }
}

fn inputs(vals: impl IntoIterator<Item = u8>) -> Vec<Vec<u8>> {
    vals.into_iter().map(|v| vec![v]).collect()
}

fn wait_all(rxs: Vec<oneshot::Receiver<Reply>>) -> Vec<Reply> {
    rxs.into_iter()
        .map(|rx| rx.blocking_recv().expect("reply"))
        .collect()
}

#[test]
fn forms_full_batches_and_flushes_after_the_delay() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let b =
        Batcher::start(cfg(4, 50_000), vec![Box::new(Fake::new(0.0, log.clone()))]).expect("start");
    let started = Instant::now();
    let rxs = b.submit(inputs(0..10), Priority::Bulk).expect("submit");
    let out = wait_all(rxs);
    for (i, r) in out.iter().enumerate() {
        let (o, _) = r.as_ref().expect("ok");
        assert_eq!(o.feature[0], i as f32);
    }
    let sizes: Vec<usize> = log.lock().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    // The last two waited for the delay, not forever.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(b.stats().batches, 3);
    assert_eq!(b.stats().images, 10);
}

#[test]
fn single_request_is_not_held_without_delay() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let b = Batcher::start(cfg(32, 0), vec![Box::new(Fake::new(0.0, log.clone()))]).expect("start");
    let t = Instant::now();
    wait_all(
        b.submit(inputs([7]), Priority::Interactive)
            .expect("submit"),
    );
    assert!(t.elapsed() < Duration::from_millis(200));
}

#[test]
fn preferred_batch_size_is_formed_without_waiting() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut c = cfg(8, 2_000_000);
    c.preferred_batch_sizes = vec![2, 4];
    let b = Batcher::start(c, vec![Box::new(Fake::new(0.0, log.clone()))]).expect("start");
    let t = Instant::now();
    let rxs = b.submit(inputs(0..4), Priority::Bulk).expect("submit");
    wait_all(rxs);
    assert!(
        t.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(log.lock().iter().map(Vec::len).collect::<Vec<_>>(), vec![4]);
}

type BatchLog = Arc<Mutex<Vec<Vec<u8>>>>;

/// A worker blocked inside a batch until `release` is sent.
fn gated(
    c: BatcherConfig,
) -> (
    Batcher,
    BatchLog,
    std_mpsc::Sender<()>,
    std_mpsc::Receiver<()>,
) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (release, gate) = std_mpsc::channel();
    let (entered_tx, entered) = std_mpsc::channel();
    let mut fake = Fake::new(0.0, log.clone());
    fake.gate = Some(Arc::new(Mutex::new(gate)));
    fake.entered = Some(entered_tx);
    let b = Batcher::start(c, vec![Box::new(fake)]).expect("start");
    (b, log, release, entered)
}

#[test]
fn interactive_requests_overtake_queued_bulk() {
    let (b, log, release, entered) = gated(cfg(2, 0));
    let first = b.submit(inputs([100]), Priority::Bulk).expect("submit");
    entered
        .recv_timeout(Duration::from_secs(5))
        .expect("worker busy");
    // While the worker is busy: six bulk items, then two interactive ones.
    let bulk = b.submit(inputs(1..7), Priority::Bulk).expect("bulk");
    let inter = b
        .submit(inputs([50, 51]), Priority::Interactive)
        .expect("inter");
    assert_eq!(b.stats().queued_bulk, 6);
    assert_eq!(b.stats().queued_interactive, 2);
    for _ in 0..10 {
        let _ = release.send(());
    }
    wait_all(first);
    wait_all(inter);
    wait_all(bulk);
    let order: Vec<Vec<u8>> = log.lock().clone();
    assert_eq!(order[0], vec![100]);
    assert_eq!(
        order[1],
        vec![50, 51],
        "interactive batch runs next: {order:?}"
    );
    assert_eq!(order[2], vec![1, 2]);
}

#[test]
fn full_queue_refuses_whole_request_and_keeps_serving() {
    let mut c = cfg(1, 0);
    c.max_queue_bulk = 3;
    let (b, _log, release, entered) = gated(c);
    let first = b.submit(inputs([0]), Priority::Bulk).expect("submit");
    entered
        .recv_timeout(Duration::from_secs(5))
        .expect("worker busy");
    let queued = b.submit(inputs([1, 2]), Priority::Bulk).expect("fits");
    let err = b.submit(inputs([3, 4]), Priority::Bulk).unwrap_err();
    assert!(
        matches!(
            err,
            Error::QueueFull {
                queued: 2,
                capacity: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::ResourceExhausted
    );
    // All or nothing: nothing of the refused request was queued.
    assert_eq!(b.stats().queued_bulk, 2);
    // The interactive queue has its own room.
    let inter = b
        .submit(inputs([9]), Priority::Interactive)
        .expect("interactive fits");
    for _ in 0..10 {
        let _ = release.send(());
    }
    wait_all(first);
    wait_all(queued);
    wait_all(inter);
    let again = b.submit(inputs([5]), Priority::Bulk).expect("room again");
    let _ = release.send(());
    assert!(wait_all(again)[0].is_ok());
}

#[test]
fn failing_batch_errors_its_items_only() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let b = Batcher::start(cfg(1, 0), vec![Box::new(Fake::new(0.0, log))]).expect("start");
    let bad = wait_all(
        b.submit(inputs([255]), Priority::Interactive)
            .expect("submit"),
    );
    assert!(matches!(&bad[0], Err(Error::Inference(m)) if m.contains("poison")));
    let good = wait_all(
        b.submit(inputs([3]), Priority::Interactive)
            .expect("submit"),
    );
    assert_eq!(good[0].as_ref().expect("ok").0.feature[0], 3.0);
}

#[test]
fn swap_changes_model_without_failing_queued_work() {
    let (b, _log, release, entered) = gated(cfg(1, 0));
    let first = b.submit(inputs([1]), Priority::Bulk).expect("submit");
    entered
        .recv_timeout(Duration::from_secs(5))
        .expect("worker busy");
    let queued = b.submit(inputs([2, 3]), Priority::Bulk).expect("submit");
    b.swap(vec![Box::new(Fake::new(
        7.0,
        Arc::new(Mutex::new(Vec::new())),
    ))])
    .expect("swap");
    assert_eq!(b.meta().name, "fake7");
    let _ = release.send(());
    let first = wait_all(first);
    let (o, m) = first[0].as_ref().expect("in-flight ok");
    assert_eq!((o.feature[1], m.name.as_str()), (0.0, "fake0"));
    for r in wait_all(queued) {
        let (o, m) = r.expect("queued ok");
        assert_eq!((o.feature[1], m.name.as_str()), (7.0, "fake7"));
    }
}

#[test]
fn shutdown_drains_the_queue() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let b = Batcher::start(cfg(2, 1_000_000), vec![Box::new(Fake::new(0.0, log))]).expect("start");
    let rxs = b.submit(inputs(0..3), Priority::Bulk).expect("submit");
    b.shutdown();
    assert!(wait_all(rxs).iter().all(Result::is_ok));
    assert!(matches!(
        b.submit(inputs([1]), Priority::Bulk),
        Err(Error::ShuttingDown)
    ));
}

#[test]
fn requests_whose_callers_have_gone_are_not_computed() {
    let mut c = cfg(4, 0);
    c.max_queue_bulk = 40;
    let (b, log, release, entered) = gated(c);
    let first = b.submit(inputs([0]), Priority::Bulk).expect("submit");
    entered
        .recv_timeout(Duration::from_secs(5))
        .expect("worker busy");
    // Forty bulk images queue behind the busy worker; their callers give up
    // (a cancelled call or a passed deadline drops the receivers).
    let gone = b.submit(inputs(1..41), Priority::Bulk).expect("fits");
    drop(gone);
    // The queue is full of abandoned items, yet a live request gets in.
    let live = b
        .submit(inputs([42, 43]), Priority::Bulk)
        .expect("abandoned items make room");
    for _ in 0..20 {
        let _ = release.send(());
    }
    wait_all(first);
    let t = Instant::now();
    let out = wait_all(live);
    assert!(out.iter().all(Result::is_ok));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let computed: Vec<u8> = log.lock().iter().flatten().copied().collect();
    assert_eq!(computed, vec![0, 42, 43], "only live callers are computed");
    assert_eq!(b.stats().abandoned, 40);
    assert_eq!(b.stats().images, 3);
}

/// What a [`ThreadProbe`] saw: (warm or infer, its tag, the thread, the
/// batch size or the warm-up's largest batch).
type Seen = Arc<Mutex<Vec<(&'static str, f32, std::thread::ThreadId, usize)>>>;

/// Records on which thread it was warmed up and ran (libtorch keeps cuDNN
/// plans per thread: a warm-up elsewhere would not count).
struct ThreadProbe {
    tag: f32,
    seen: Seen,
}

impl Backend for ThreadProbe {
    fn infer(&mut self, inputs: &[&[u8]]) -> std::result::Result<Vec<RawOutput>, String> {
        let me = std::thread::current().id();
        self.seen.lock().push(("infer", self.tag, me, inputs.len()));
        Ok(inputs
            .iter()
            .map(|_| RawOutput {
                feature: vec![self.tag, 0.0],
                probabilities: vec![0.5, 0.5],
            })
            .collect())
    }

    fn meta(&self) -> Arc<ModelMeta> {
        meta(&format!("probe{}", self.tag))
    }

    fn warm_up(&mut self, max_batch: usize) -> std::result::Result<(), String> {
        let me = std::thread::current().id();
        self.seen.lock().push(("warm", self.tag, me, max_batch));
        Ok(())
    }
}

#[test]
fn each_instance_is_warmed_up_on_its_serving_thread_before_it_serves() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let probe = |tag| -> Box<dyn Backend> {
        Box::new(ThreadProbe {
            tag,
            seen: seen.clone(),
        })
    };
    let b = Batcher::start(cfg(8, 0), vec![probe(1.0)]).expect("start");
    wait_all(
        b.submit(inputs([1, 2]), Priority::Interactive)
            .expect("submit"),
    );
    b.swap(vec![probe(2.0)]).expect("swap");
    for r in wait_all(
        b.submit(inputs([3]), Priority::Interactive)
            .expect("submit"),
    ) {
        assert_eq!(
            r.expect("served").0.feature[0],
            2.0,
            "the new instance serves"
        );
    }
    let seen = seen.lock().clone();
    let kinds: Vec<(&str, f32)> = seen.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        kinds,
        [("warm", 1.0), ("infer", 1.0), ("warm", 2.0), ("infer", 2.0)],
        "each instance warmed once, before its first batch"
    );
    assert!(
        seen.iter().all(|s| s.2 == seen[0].2),
        "one worker thread did all: {seen:?}"
    );
    assert_ne!(
        seen[0].2,
        std::thread::current().id(),
        "not the caller's thread"
    );
    assert_eq!(
        (seen[0].3, seen[2].3),
        (8, 8),
        "warmed for the batcher's largest batch"
    );
}
