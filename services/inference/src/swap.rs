//! Model swaps: weights read from the model folder or sent as bytes (then
//! staged on disk), checked against the registry's SHA-256, loaded once per
//! worker and swapped in; the model replaced may be retained.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::{build_backend, read_weights, sha256_hex, ModelSpec};
use crate::batcher::{Batcher, ModelMeta};
use crate::engine::{release, Inference, ModelId, Retained};
use crate::error::{Error, Result};

/// Weights files larger than this are refused (EfficientNet-Lite0 needs
/// about 20 MB).
const MAX_WEIGHTS_BYTES: u64 = 2 << 30;

/// Keeps a registry name usable in a file name.
fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What the batcher serves for `model` once its weights are at `weights`.
fn spec_of(model: ModelId, class_names: Vec<String>, weights: PathBuf) -> ModelSpec {
    ModelSpec {
        name: model.name,
        version: model.version,
        class_names,
        weights,
    }
}

impl Inference {
    /// Lets LoadModel read weights by path inside `dir` (and nowhere else).
    pub fn with_model_dir(mut self, dir: &std::path::Path) -> Self {
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        self.model_dir = match dir.canonicalize() {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(model_dir = %dir.display(), error = %e, "the model folder cannot be opened: LoadModel by path is off");
                None
            }
        };
        self
    }

    /// Reads the weights at `path` (relative to the model folder, or
    /// absolute) if they lie inside the model folder once links are
    /// resolved; opened without following links and checked again after
    /// the open, so that a link swapped in meanwhile is refused too.
    /// Messages name no path: the caller knows the one it sent, and where
    /// links lead is the server's business.
    fn read_in_model_dir(&self, path: &str) -> Result<(PathBuf, Vec<u8>)> {
        let Some(dir) = &self.model_dir else {
            return Err(Error::Forbidden(
                "loading weights by path is off: the inference service has no model folder \
                 (model_dir); send the weights as data"
                    .into(),
            ));
        };
        let asked = dir.join(path.trim());
        let real = asked.canonicalize().map_err(|e| {
            tracing::info!(path = %asked.display(), error = %e, "LoadModel: no such weights file");
            Error::ModelLoad(
                "no weights file at that path in the inference service's model folder (model_dir)"
                    .into(),
            )
        })?;
        let outside = || {
            tracing::warn!(path = %asked.display(), resolved = %real.display(), "LoadModel: weights path outside the model folder refused");
            Error::Forbidden(
                "the weights path lies outside the inference service's model folder (model_dir), \
                 or leads out of it through a link: put the file there, or send the weights as data"
                    .into(),
            )
        };
        if !real.starts_with(dir) {
            return Err(outside());
        }
        let bytes = cbir_common::fs::read_under(&real, std::slice::from_ref(dir), MAX_WEIGHTS_BYTES)
            .map_err(|e| match e {
                cbir_common::fs::OpenError::Link | cbir_common::fs::OpenError::Outside => outside(),
                other => {
                    tracing::info!(path = %real.display(), error = %other, "LoadModel: weights unreadable");
                    Error::ModelLoad(format!("the weights file cannot be read: {other}"))
                }
            })?;
        Ok((real, bytes))
    }

    /// Loads the weights at `path` (inside the model folder, see
    /// [`Self::read_in_model_dir`]) once per worker and swaps them in, if
    /// their SHA-256 is `expected_sha256`. With `retain_previous` the model
    /// it replaces keeps serving (one worker) the requests that name it,
    /// until the next load; without, a retained model is dropped.
    /// Reloading the active model keeps the retained one when asked to.
    pub async fn load_model(
        &self,
        model: ModelId,
        class_names: Vec<String>,
        path: &str,
        expected_sha256: &str,
        retain_previous: bool,
    ) -> Result<Arc<ModelMeta>> {
        let _loading = self.loading.lock().await;
        let loaded = match self.read_in_model_dir(path) {
            Ok((weights, data)) => {
                let spec = spec_of(model, class_names, weights);
                self.load_locked(spec, data, expected_sha256, retain_previous)
                    .await
            }
            Err(e) => Err(e),
        };
        self.prune_staging();
        loaded
    }

    /// [`Self::load_model`] for weights sent as bytes: they are kept in a
    /// staging folder while their model is current or retained.
    pub async fn load_model_data(
        &self,
        model: ModelId,
        class_names: Vec<String>,
        data: Vec<u8>,
        expected_sha256: &str,
        retain_previous: bool,
    ) -> Result<Arc<ModelMeta>> {
        let _loading = self.loading.lock().await;
        // Checked before anything is written.
        let loaded = async {
            check_sha256(&data, expected_sha256)?;
            let weights = self.stage(&model, &data).await?;
            let spec = spec_of(model, class_names, weights);
            self.load_locked(spec, data, expected_sha256, retain_previous)
                .await
        }
        .await;
        self.prune_staging();
        loaded
    }

    async fn stage(&self, model: &ModelId, data: &[u8]) -> Result<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        tokio::fs::create_dir_all(&self.staging)
            .await
            .map_err(|e| Error::Internal(format!("cannot create the staging folder: {e}")))?;
        // Unique: a reload under the same name must not overwrite the file
        // of the model it may have to retain.
        let path = self.staging.join(format!(
            "{}-{}-{}.safetensors",
            file_part(&model.name),
            file_part(&model.version),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        tokio::fs::write(&path, data)
            .await
            .map_err(|e| Error::Internal(format!("cannot stage the weights: {e}")))?;
        Ok(path)
    }

    /// Deletes staged weights whose model is neither current nor retained.
    fn prune_staging(&self) {
        let keep = [
            Some(self.current.lock().weights.clone()),
            self.retained
                .read()
                .as_ref()
                .map(|r| r.spec.weights.clone()),
        ];
        let Ok(entries) = std::fs::read_dir(&self.staging) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if !keep.iter().flatten().any(|k| k == &path) {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete staged weights");
                }
            }
        }
    }

    async fn load_locked(
        &self,
        spec: ModelSpec,
        weights: Vec<u8>,
        expected_sha256: &str,
        retain_previous: bool,
    ) -> Result<Arc<ModelMeta>> {
        check_sha256(&weights, expected_sha256)?;
        let previous = self.current.lock().clone();
        let previous_sha = self.batcher.meta().weights_sha256.clone();
        let new_id = ModelId::new(spec.name.clone(), spec.version.clone());
        let previous_id = ModelId::new(previous.name.clone(), previous.version.clone());
        // Reloading the active model has nothing new to retain: the model
        // retained before (another one) stays.
        let keep_existing = retain_previous && previous_id == new_id;
        let retain = (retain_previous && !keep_existing).then(|| previous.clone());
        let workers = self.batcher.workers();
        let device = self.device.clone();
        let load = spec.clone();
        let (instances, kept) = tokio::task::spawn_blocking(move || {
            let instances = (0..workers)
                .map(|_| build_backend(&load, &weights, &device))
                .collect::<Result<Vec<_>>>()?;
            let kept = retain
                .map(|p| {
                    // Rebuilt from its file, which must still hold the
                    // weights it was loaded from.
                    read_weights(&p.weights)
                        .and_then(|w| {
                            if sha256_hex(&w) == previous_sha {
                                Ok(w)
                            } else {
                                Err(Error::ModelLoad(
                                    "its weights file changed since it was loaded".into(),
                                ))
                            }
                        })
                        .and_then(|w| build_backend(&p, &w, &device))
                        .map_err(|e| {
                            let cause = match e {
                                Error::ModelLoad(m) => m,
                                other => other.to_string(),
                            };
                            Error::ModelLoad(format!(
                            "the previous model {}:{} cannot be retained ({cause}); load without \
                             retain_previous",
                            p.name, p.version
                        ))
                        })
                })
                .transpose()?;
            Ok::<_, Error>((instances, kept))
        })
        .await
        .map_err(|e| Error::Internal(format!("model load task failed: {e}")))??;
        let kept = match kept {
            Some(backend) => Some(Retained {
                spec: previous,
                batcher: Arc::new(Batcher::start(
                    self.batcher.config().clone(),
                    vec![backend],
                )?),
            }),
            None => None,
        };
        // The retained model is in place before the main batcher swaps, so
        // that a request naming the old model always finds it somewhere.
        let replaced = if keep_existing {
            None
        } else {
            std::mem::replace(&mut *self.retained.write(), kept)
        };
        self.batcher.swap(instances)?;
        *self.current.lock() = spec;
        if let Some(old) = replaced {
            release(old.batcher);
        }
        let meta = self.batcher.meta();
        let retained = self.retained();
        tracing::info!(
            model = %meta.name,
            version = %meta.version,
            retained = %retained.as_deref().map_or_else(|| "none".into(), |m| ModelId::of(m).to_string()),
            "model swapped in"
        );
        Ok(meta)
    }
}

/// The hex SHA-256 a LoadModel request gives, lowercased: required, so
/// that only the weights the caller (the registry) vouches for are served.
pub fn expected_sha256(given: &str) -> Result<String> {
    let s = given.trim().to_ascii_lowercase();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidRequest(
            "weights_sha256 must be the weights' SHA-256 as 64 hex digits (the registry's \
             weights_sha256)"
                .into(),
        ));
    }
    Ok(s)
}

/// Refuses weights whose SHA-256 is not `expected` (lowercase hex).
fn check_sha256(weights: &[u8], expected: &str) -> Result<()> {
    let got = sha256_hex(weights);
    if got == expected {
        Ok(())
    } else {
        tracing::warn!(
            expected,
            got,
            "LoadModel: weights with another SHA-256 refused"
        );
        Err(Error::InvalidRequest(format!(
            "the weights' SHA-256 is {got}, not the expected {expected}: refused (tampered or \
             wrong weights); the served model is unchanged"
        )))
    }
}
