//! The ONNX Runtime backend: the fused network written as an ONNX graph
//! from the served weights ([`export`]) and run by `libonnxruntime`, which
//! is loaded at run time from the pinned PyPI wheel (as libtorch comes from
//! the torch wheel). On a CPU it runs the network faster than the tch fused
//! path (docs/BENCHMARKS.md), so `backend = "auto"` picks it there.

pub mod export;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::backend::{load_network, now_ms, sha256_hex, DeviceConfig, ModelSpec};
use crate::batcher::{Backend, ModelMeta, RawOutput};
use crate::error::{Error, Result};
use crate::model::FusedEfficientNet;
use cbir_imaging::INPUT_SIZE;

pub use export::{to_onnx, GraphInfo};

/// Library file names of ONNX Runtime, newest naming first.
const LIBRARY_NAMES: [&str; 2] = ["libonnxruntime.so", "libonnxruntime.dylib"];

/// Where `libonnxruntime` is looked for when the configuration names none:
/// `ORT_DYLIB_PATH` (the `ort` crate's variable), then the `onnxruntime`
/// package of the Python environment `scripts/setup.sh` makes (`CBIR_VENV`,
/// default `~/.cache/cbir/venv`), then `/opt/onnxruntime/lib` (the image).
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::Config(format!(
                "device.onnxruntime_library {} does not exist: point it at libonnxruntime.so \
                 (the onnxruntime wheel's onnxruntime/capi/ folder has it)",
                p.display()
            )))
        };
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from) {
        // Set on purpose: a wrong path is an error, not a reason to load
        // another library.
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Config(format!(
                "ORT_DYLIB_PATH {} does not exist: point it at libonnxruntime.so or unset it",
                p.display()
            )))
        };
    }
    let venv = std::env::var_os("CBIR_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cbir/venv")));
    let mut dirs = Vec::new();
    if let Some(venv) = venv {
        if let Ok(libs) = std::fs::read_dir(venv.join("lib")) {
            for py in libs.flatten() {
                dirs.push(py.path().join("site-packages/onnxruntime/capi"));
            }
        }
    }
    dirs.push(PathBuf::from("/opt/onnxruntime/lib"));
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| LIBRARY_NAMES.iter().any(|l| n.starts_with(l)))
            })
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return Ok(p);
        }
    }
    Err(Error::Config(format!(
        "libonnxruntime not found (looked at ORT_DYLIB_PATH and in {}): run scripts/setup.sh \
         (it installs the onnxruntime wheel), set device.onnxruntime_library, or use \
         device.backend = \"tch\"",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The process's ONNX Runtime environment. The library is loaded once; a
/// failure is remembered, so that `auto` falls back to tch without retrying
/// at every model load.
fn environment(cfg: &DeviceConfig) -> Result<&'static ort::environment::Environment> {
    static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> =
        OnceLock::new();
    ENV.get_or_init(|| {
        let lib = find_library(cfg.onnxruntime_library.as_deref()).map_err(|e| e.to_string())?;
        let env = ort::init_from(&lib)
            .map_err(|e| format!("cannot load {}: {e}", lib.display()))?
            .with_name("cbir-inference")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", lib.display()))?;
        tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
        Ok(env)
    })
    .as_ref()
    .map_err(|e| Error::Config(e.clone()))
}

/// Whether ONNX Runtime can be loaded here (the `auto` backend's test).
pub fn available(cfg: &DeviceConfig) -> Result<()> {
    environment(cfg).map(|_| ())
}

fn ort_err(what: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::ModelLoad(format!("{what}: {e}"))
}

/// Execution providers for `device` in `kind`, besides the CPU: none on
/// the CPU; on CUDA, TensorRT (f16 when asked; skipped when the library
/// lacks it) and then CUDA itself, which must load: a GPU configuration
/// never runs on the CPU unnoticed.
fn providers(
    device: tch::Device,
    kind: tch::Kind,
) -> Result<Vec<ort::ep::ExecutionProviderDispatch>> {
    match (device, kind) {
        (tch::Device::Cpu, tch::Kind::Float) => Ok(Vec::new()),
        #[cfg(feature = "cuda")]
        (tch::Device::Cuda(n), tch::Kind::Float | tch::Kind::Half) => Ok(vec![
            ort::ep::TensorRT::default()
                .with_device_id(n as i32)
                .with_fp16(kind == tch::Kind::Half)
                .build(),
            ort::ep::CUDA::default()
                .with_device_id(n as i32)
                .build()
                .error_on_failure(),
        ]),
        (device, kind) => Err(Error::Config(format!(
            "the onnx backend runs f32 on the CPU{} (asked: {device:?}, {kind:?}); use \
             device.backend = \"tch\" for this device and dtype",
            if cfg!(feature = "cuda") {
                " and f32/f16 on CUDA"
            } else {
                " in this build (CUDA needs the cuda feature)"
            }
        ))),
    }
}

/// A session over the encoded ONNX model `graph` with `threads` intra-op
/// threads, on the configured device.
pub fn session(cfg: &DeviceConfig, graph: &[u8], threads: usize) -> Result<Session> {
    let env = environment(cfg)?;
    let (device, kind) = cfg.resolve()?;
    let eps = providers(device, kind)?;
    let setting = |e: ort::Error<ort::session::builder::SessionBuilder>| {
        Error::ModelLoad(format!("configuring the ONNX Runtime session: {e}"))
    };
    Session::builder(env)
        .map_err(ort_err("creating an ONNX Runtime session"))?
        .with_execution_providers(eps)
        .map_err(setting)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(setting)?
        .with_intra_threads(threads)
        .map_err(setting)?
        .with_inter_threads(1)
        .map_err(setting)?
        .with_intra_op_spinning(cfg.spin_wait)
        .map_err(setting)?
        .commit_from_memory(graph)
        .map_err(ort_err("ONNX Runtime refused the written graph"))
}

/// The ONNX graph of the served network of `weights`, its class names and
/// its feature width. The network is built and folded on the CPU by tch,
/// then written out; nothing of tch stays.
fn write_graph(
    spec: &ModelSpec,
    weights: &[u8],
    sha: &str,
) -> Result<(Vec<u8>, Vec<String>, usize)> {
    let (_vs, net, class_names) = load_network(weights, &spec.class_names, tch::Device::Cpu)?;
    let fused = FusedEfficientNet::from_trained(&net);
    let graph = to_onnx(
        &fused,
        &GraphInfo {
            model_name: &spec.name,
            model_version: &spec.version,
            weights_sha256: sha,
        },
    )?;
    Ok((graph, class_names, net.embedding_dim() as usize))
}

/// The encoded ONNX graph ONNX Runtime serves for these weights (what
/// `inference-bench --write-onnx` saves).
pub fn graph_of_weights(spec: &ModelSpec, weights: &[u8]) -> Result<Vec<u8>> {
    write_graph(spec, weights, &sha256_hex(weights)).map(|(g, _, _)| g)
}

/// One model instance on ONNX Runtime.
pub struct OrtBackend {
    session: Session,
    /// The scaled NCHW input of the current pass.
    input: Vec<f32>,
    on_cpu: bool,
    meta: Arc<ModelMeta>,
}

impl OrtBackend {
    /// Reads `spec.weights` and builds the model from it.
    pub fn load(spec: &ModelSpec, cfg: &DeviceConfig) -> Result<Self> {
        Self::from_bytes(spec, &crate::backend::read_weights(&spec.weights)?, cfg)
    }

    /// Builds the network from the bytes of its weights file, folds it,
    /// writes its ONNX graph and opens a session on it.
    pub fn from_bytes(spec: &ModelSpec, weights: &[u8], cfg: &DeviceConfig) -> Result<Self> {
        let (device, kind) = cfg.resolve()?;
        providers(device, kind)?;
        let sha = sha256_hex(weights);
        let (graph, class_names, dim) = write_graph(spec, weights, &sha)?;
        let session = session(cfg, &graph, cfg.threads())?;
        let meta = Arc::new(ModelMeta {
            name: spec.name.clone(),
            version: spec.version.clone(),
            architecture: "efficientnet-lite0".into(),
            class_names: Arc::new(class_names),
            embedding_dim: dim,
            device: format!("{device:?}").to_lowercase(),
            dtype: cfg.dtype.clone(),
            backend: "onnxruntime".into(),
            source: spec.weights.display().to_string(),
            weights_sha256: sha,
            loaded_at_ms: now_ms(),
        });
        Ok(Self {
            session,
            input: Vec::new(),
            on_cpu: device == tch::Device::Cpu,
            meta,
        })
    }

    /// Raw outputs of one pass over 224x224 RGB crops: (unit features,
    /// probabilities, logits), each row-major with one row per crop.
    pub fn run(&mut self, crops: &[&[u8]]) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        crate::batcher::check_inputs(crops).map_err(Error::InvalidRequest)?;
        let side = INPUT_SIZE as usize;
        let n = crops.len();
        // Into a buffer kept between passes: a fresh one would be mapped
        // and faulted in at every pass.
        export::scale_nchw(crops, &mut self.input);
        let input = TensorRef::from_array_view(([n, 3, side, side], self.input.as_slice()))
            .map_err(|e| Error::Inference(format!("building the input tensor: {e}")))?;
        let outputs = self
            .session
            .run(ort::inputs![export::INPUT => input])
            .map_err(|e| Error::Inference(e.to_string()))?;
        let take = |name: &str| -> Result<Vec<f32>> {
            let (_, data) = outputs[name]
                .try_extract_tensor::<f32>()
                .map_err(|e| Error::Inference(format!("reading {name}: {e}")))?;
            Ok(data.to_vec())
        };
        Ok((
            take(export::FEATURES)?,
            take(export::PROBABILITIES)?,
            take(export::LOGITS)?,
        ))
    }
}

impl Backend for OrtBackend {
    fn infer(&mut self, inputs: &[&[u8]]) -> std::result::Result<Vec<RawOutput>, String> {
        let (feats, probs, _) = self.run(inputs).map_err(|e| e.to_string())?;
        Ok(RawOutput::split(&feats, &probs, inputs.len()))
    }

    fn meta(&self) -> Arc<ModelMeta> {
        self.meta.clone()
    }

    /// On a CPU ONNX Runtime runs as many images per second at batch 1 as
    /// at 32 (inference-bench, docs/BENCHMARKS.md): batches above 4 only
    /// add latency. A GPU gains from large ones.
    fn useful_batch(&self) -> Option<usize> {
        self.on_cpu.then_some(4)
    }
}
