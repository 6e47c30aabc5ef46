//! The job queue: submitted jobs wait in the database and run one at a
//! time on the device, on a thread of their own; their progress is live
//! for watchers and written to the database now and then.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use tokio::sync::{mpsc, watch};

use crate::dataset;
use crate::error::{Error, Result};
use crate::store::{now_ms, JobRow};
use crate::trainer::{self, Params};
use crate::training::{check_name, is_terminal, state_name, Training};

/// Progress is written to the database at most this often (the live
/// stream gets every update).
const PERSIST_EVERY: Duration = Duration::from_secs(2);

/// Lowers the calling thread's scheduling priority: training must leave the
/// CPU to interactive searches. Threads it starts (libtorch's pool) inherit it.
#[allow(unsafe_code)]
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    // SAFETY: setpriority only reads its integer arguments; with who = 0 on
    // Linux it changes the calling thread alone.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r != 0 {
        tracing::warn!(nice, "could not lower the training thread's priority");
    }
}

impl Training {
    /// Checks the data set and queues the job.
    pub async fn submit(&self, req: pb::SubmitJobRequest) -> Result<pb::Job> {
        let name = req.name.trim().to_string();
        check_name(&name)?;
        let params = Params::from_request(req.params.as_ref(), &self.cfg.defaults)?;
        let (dir, label) = self.dataset_dir(&req)?;
        let p2 = params.clone();
        let d2 = dir.clone();
        let roots = self.cfg.allowed_roots.clone();
        let ds = tokio::task::spawn_blocking(move || {
            dataset::scan(
                &d2,
                p2.min_images_per_class as usize,
                p2.validation_fraction,
                p2.seed,
                dataset::Links::Within(&roots),
            )
        })
        .await
        .map_err(|e| Error::Internal(format!("scan task failed: {e}")))??;
        let job = pb::Job {
            id: uuid::Uuid::new_v4().to_string(),
            name,
            state: pb::JobState::Queued as i32,
            message: "queued".into(),
            params: Some(params.to_proto()),
            submitted_by: req.submitted_by.chars().take(200).collect(),
            created_at_ms: now_ms(),
            class_names: ds.classes.clone(),
            train_images: ds.train.len() as u32,
            validation_images: ds.validation.len() as u32,
            skipped: ds.skipped.clone(),
            progress: Some(pb::JobProgress {
                phase: "queued".into(),
                ..Default::default()
            }),
            dataset: label,
            ..Default::default()
        };
        self.store
            .insert_job(&JobRow {
                job: job.clone(),
                dataset_dir: dir.display().to_string(),
            })
            .await?;
        let (tx, _) = watch::channel(job.clone());
        self.live.lock().insert(job.id.clone(), tx);
        self.wake.notify_one();
        tracing::info!(job = %job.id, name = %job.name, classes = job.class_names.len(), train = job.train_images, "training job queued");
        Ok(job)
    }

    pub async fn job(&self, id: &str) -> Result<pb::Job> {
        if let Some(tx) = self.live.lock().get(id) {
            return Ok(tx.borrow().clone());
        }
        Ok(self.store.job(id).await?.job)
    }

    pub async fn jobs(&self) -> Result<Vec<pb::Job>> {
        let mut jobs: Vec<pb::Job> = self
            .store
            .jobs()
            .await?
            .into_iter()
            .map(|r| r.job)
            .collect();
        let live = self.live.lock();
        for j in &mut jobs {
            if let Some(tx) = live.get(&j.id) {
                *j = tx.borrow().clone();
            }
        }
        Ok(jobs)
    }

    /// A receiver of the job's updates, or `None` when it is not live.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<pb::Job>> {
        self.live.lock().get(id).map(watch::Sender::subscribe)
    }

    pub async fn cancel(&self, id: &str) -> Result<pb::Job> {
        let job = self.job(id).await?;
        if is_terminal(job.state) {
            return Err(Error::FailedPrecondition(format!(
                "job {id} has ended already ({})",
                state_name(job.state)
            )));
        }
        if let Some((running, flag)) = &*self.running.lock() {
            if running == id {
                flag.store(true, Ordering::Relaxed);
                let mut j = job.clone();
                j.message = "cancelling".into();
                return Ok(j);
            }
        }
        let message = "cancelled before it started";
        if !self
            .store
            .transition(id, pb::JobState::Queued, pb::JobState::Cancelled, message)
            .await?
        {
            // The queue took it in the meantime: stop it there.
            if let Some((running, flag)) = &*self.running.lock() {
                if running == id {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            let mut j = self.job(id).await?;
            j.message = "cancelling".into();
            return Ok(j);
        }
        let mut j = job;
        j.state = pb::JobState::Cancelled as i32;
        j.message = message.into();
        j.finished_at_ms = now_ms();
        if let Some(tx) = self.live.lock().remove(id) {
            tx.send_replace(j.clone());
        }
        self.release_dataset(&j).await;
        Ok(j)
    }

    /// Runs queued jobs one after the other until `stop` fires; a running
    /// job is cancelled at shutdown.
    pub async fn run_queue(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            match self.store.next_queued().await {
                Ok(Some(row)) => {
                    let id = row.job.id.clone();
                    let stop_flag = Arc::new(AtomicBool::new(false));
                    *self.running.lock() = Some((id.clone(), stop_flag.clone()));
                    let run = self.clone().run_job(row, stop_flag.clone());
                    tokio::pin!(run);
                    loop {
                        tokio::select! {
                            _ = &mut run => break,
                            _ = stop.changed() => {
                                stop_flag.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    *self.running.lock() = None;
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the job queue failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    async fn run_job(self: Arc<Self>, row: JobRow, cancel: Arc<AtomicBool>) {
        let mut job = row.job;
        match self
            .store
            .transition(
                &job.id,
                pb::JobState::Queued,
                pb::JobState::Running,
                "running",
            )
            .await
        {
            Ok(true) => {}
            // Cancelled since it was read from the queue.
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, job = %job.id, "could not start the job; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                return;
            }
        }
        job.state = pb::JobState::Running as i32;
        job.started_at_ms = now_ms();
        job.message = "running".into();
        let tx = {
            let mut live = self.live.lock();
            live.entry(job.id.clone())
                .or_insert_with(|| watch::channel(job.clone()).0)
                .clone()
        };
        tx.send_replace(job.clone());
        if let Err(e) = self.store.update_job(&job).await {
            tracing::warn!(error = %e, job = %job.id, "could not mark the job running");
        }
        self.metrics.running.set(1);
        let started = Instant::now();
        let result = self
            .train_job(&mut job, &row.dataset_dir, &tx, cancel.clone())
            .await;
        job.finished_at_ms = now_ms();
        match result {
            Ok(model) => {
                job.state = pb::JobState::Succeeded as i32;
                job.message = format!(
                    "registered {}:{} (validation accuracy {:.3})",
                    model
                        .model
                        .as_ref()
                        .map(|m| m.name.as_str())
                        .unwrap_or_default(),
                    model
                        .model
                        .as_ref()
                        .map(|m| m.version.as_str())
                        .unwrap_or_default(),
                    model.validation_accuracy
                );
                job.model = model.model;
                self.metrics
                    .finished
                    .with_label_values(&["succeeded"])
                    .inc();
            }
            Err(Error::Cancelled) => {
                job.state = pb::JobState::Cancelled as i32;
                job.message = "cancelled".into();
                self.metrics
                    .finished
                    .with_label_values(&["cancelled"])
                    .inc();
            }
            Err(e) => {
                job.state = pb::JobState::Failed as i32;
                job.message = e.public_message();
                tracing::warn!(job = %job.id, error = %e, "training job failed");
                self.metrics.finished.with_label_values(&["failed"]).inc();
            }
        }
        self.metrics.running.set(0);
        if let Some(p) = &mut job.progress {
            p.elapsed_seconds = started.elapsed().as_secs_f64();
            p.eta_seconds = 0.0;
            p.phase = state_name(job.state).into();
        }
        if let Err(e) = self.store.update_job(&job).await {
            tracing::error!(error = %e, job = %job.id, "could not record the job's end");
        }
        tx.send_replace(job.clone());
        self.live.lock().remove(&job.id);
        // Unpacked uploads are only needed by their jobs.
        self.release_dataset(&job).await;
        tracing::info!(job = %job.id, state = state_name(job.state), message = %job.message, "training job ended");
    }

    async fn train_job(
        &self,
        job: &mut pb::Job,
        dir: &str,
        tx: &watch::Sender<pb::Job>,
        cancel: Arc<AtomicBool>,
    ) -> Result<pb::RegisteredModel> {
        let params = Params::from_request(job.params.as_ref(), &self.cfg.defaults)?;
        let dir = PathBuf::from(dir);
        let (ptx, mut prx) = mpsc::unbounded_channel::<(pb::JobProgress, Option<pb::CurvePoint>)>();
        let base = self.cfg.base_weights.clone();
        let device = crate::device(&self.cfg.device)?;
        let limits = self.cfg.image_limits;
        let nice = self.cfg.nice;
        let threads = self.cfg.threads;
        let roots = self.cfg.allowed_roots.clone();
        let p2 = params.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("training".into())
            .spawn(move || {
                lower_priority(nice);
                if threads > 0 {
                    tch::set_num_threads(threads as i32);
                }
                let r = (|| -> Result<(dataset::Dataset, trainer::Trained)> {
                    let ds = dataset::scan(
                        &dir,
                        p2.min_images_per_class as usize,
                        p2.validation_fraction,
                        p2.seed,
                        dataset::Links::Within(&roots),
                    )?;
                    let setup = trainer::Setup {
                        base_weights: &base,
                        device,
                        limits,
                        cancel: &cancel,
                    };
                    let mut report = |p: &pb::JobProgress, c: Option<pb::CurvePoint>| {
                        let _ = ptx.send((p.clone(), c));
                    };
                    let trained = trainer::train(&setup, &ds, &p2, &mut report)?;
                    Ok((ds, trained))
                })();
                let _ = done_tx.send(r);
            })
            .map_err(|e| Error::Internal(format!("cannot start the training thread: {e}")))?;

        let mut curve = Vec::new();
        let mut last_persist = Instant::now();
        while let Some((p, point)) = prx.recv().await {
            self.metrics.observe(&p);
            job.progress = Some(p);
            tx.send_replace(job.clone());
            curve.extend(point);
            if last_persist.elapsed() >= PERSIST_EVERY {
                last_persist = Instant::now();
                self.persist(job, &mut curve).await;
            }
        }
        self.persist(job, &mut curve).await;
        let (ds, trained) = done_rx
            .await
            .map_err(|_| Error::Internal("the training thread ended without a result".into()))??;
        job.skipped = ds.skipped.iter().chain(&trained.skipped).cloned().collect();
        self.register_trained(job, ds, trained).await
    }

    async fn persist(&self, job: &pb::Job, curve: &mut Vec<pb::CurvePoint>) {
        if let Err(e) = self.store.add_curve(&job.id, curve).await {
            tracing::warn!(error = %e, job = %job.id, "could not store curve points");
        }
        curve.clear();
        if let Err(e) = self.store.update_job(job).await {
            tracing::warn!(error = %e, job = %job.id, "could not store the job's progress");
        }
    }

    pub async fn curve(
        &self,
        target: Option<pb::get_performance_curve_request::Target>,
    ) -> Result<Vec<pb::CurvePoint>> {
        let job_id = match target {
            Some(pb::get_performance_curve_request::Target::JobId(id)) => id,
            Some(pb::get_performance_curve_request::Target::Model(m)) => {
                let m = self.store.model(&m).await?;
                if m.job_id.is_empty() {
                    return Ok(Vec::new());
                }
                m.job_id
            }
            None => return Err(Error::InvalidArgument("give a job id or a model".into())),
        };
        // NotFound for an unknown job rather than an empty curve.
        self.job(&job_id).await?;
        self.store.curve(&job_id).await
    }
}
