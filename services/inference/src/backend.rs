//! The libtorch model instance a batcher worker owns.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::batcher::{Backend, ModelMeta, RawOutput};
use crate::error::{Error, Result};
use crate::model::{input_from_nhwc_u8, EfficientNetLite0, FusedEfficientNet, Output};
use cbir_imaging::INPUT_SIZE;

/// Which engine runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// libtorch through tch (CPU and CUDA, f32/f16/bf16).
    Tch,
    /// ONNX Runtime on the CPU (f32).
    Onnx,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Tch => "tch",
            Engine::Onnx => "onnxruntime",
        }
    }
}

/// Where the network runs, on which engine and in which precision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available).
    pub device: String,
    /// `f32`, or on CUDA `f16` / `bf16`.
    pub dtype: String,
    /// Run convolutions in NHWC (channels-last) memory order.
    pub channels_last: bool,
    /// libtorch intra-op threads; 0 = one per core.
    pub torch_threads: usize,
    /// Serve a copy with BatchNorm folded into the convolutions and NHWC
    /// activations (same outputs, faster); off runs the trainable module.
    pub fuse: bool,
    /// `auto`, `tch` or `onnx`. `auto` runs ONNX Runtime on a CPU with f32
    /// and a fused network when its library loads (it is the faster there,
    /// docs/BENCHMARKS.md), tch otherwise (CUDA, f16/bf16, unfused).
    pub backend: String,
    /// libonnxruntime to load; found in the setup's Python environment when
    /// unset (see `onnx::find_library`).
    pub onnxruntime_library: Option<PathBuf>,
    /// Let ONNX Runtime's threads spin briefly between passes (its own
    /// default): a batch-1 pass takes 4.6 ms instead of 6 on 2 cores, and
    /// ingest measured 137 against 143 images/s without (docs/BENCHMARKS.md);
    /// off gives the cores back sooner when other work shares them.
    pub spin_wait: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            dtype: "f32".into(),
            channels_last: true,
            torch_threads: 0,
            fuse: true,
            backend: "auto".into(),
            onnxruntime_library: None,
            spin_wait: true,
        }
    }
}

impl DeviceConfig {
    /// Intra-op threads of one model instance.
    pub fn threads(&self) -> usize {
        if self.torch_threads > 0 {
            self.torch_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The engine this configuration runs on; `auto` tries to load ONNX
    /// Runtime where it would run (CPU, f32, fused).
    pub fn engine(&self) -> Result<Engine> {
        match self.backend.as_str() {
            "tch" => Ok(Engine::Tch),
            "onnx" => {
                crate::onnx::available(self)?;
                Ok(Engine::Onnx)
            }
            "auto" => {
                let (device, kind) = self.resolve()?;
                if device != Device::Cpu || kind != Kind::Float || !self.fuse {
                    return Ok(Engine::Tch);
                }
                match crate::onnx::available(self) {
                    Ok(()) => Ok(Engine::Onnx),
                    Err(e) => {
                        static ONCE: std::sync::Once = std::sync::Once::new();
                        ONCE.call_once(|| {
                            tracing::warn!(
                                error = %e,
                                "ONNX Runtime is not available; serving on tch (slower on a CPU)"
                            )
                        });
                        Ok(Engine::Tch)
                    }
                }
            }
            other => Err(Error::Config(format!(
                "device.backend {other:?} is not one of auto, tch, onnx"
            ))),
        }
    }

    pub fn resolve(&self) -> Result<(Device, Kind)> {
        let device = match self.device.as_str() {
            "cpu" => Device::Cpu,
            "auto" => Device::cuda_if_available(),
            "cuda" => Device::Cuda(0),
            s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Device::Cuda(n),
                None => {
                    return Err(Error::Config(format!(
                        "device {s:?} is not one of cpu, cuda, cuda:N, auto"
                    )))
                }
            },
        };
        if let Device::Cuda(n) = device {
            if !tch::Cuda::is_available() || n >= tch::Cuda::device_count() as usize {
                return Err(Error::Config(format!(
                    "device cuda:{n} is not available (CUDA devices: {}); use a GPU build \
                     (cargo feature `cuda`) on a machine with a GPU, or device = \"cpu\"",
                    tch::Cuda::device_count()
                )));
            }
        }
        let kind = match (self.dtype.as_str(), device) {
            ("f32", _) => Kind::Float,
            ("f16", Device::Cuda(_)) => Kind::Half,
            ("bf16", Device::Cuda(_)) => Kind::BFloat16,
            ("f16" | "bf16", _) => {
                return Err(Error::Config(format!(
                    "dtype {} needs a CUDA device; use f32 on the CPU",
                    self.dtype
                )))
            }
            (d, _) => {
                return Err(Error::Config(format!(
                    "dtype {d:?} is not one of f32, f16, bf16"
                )))
            }
        };
        Ok((device, kind))
    }
}

/// A model to load: registry identity, class names and a weights file.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    /// Empty means the ImageNet classes.
    pub class_names: Vec<String>,
    pub weights: PathBuf,
}

/// A model instance on the configured engine, from the bytes of its
/// weights file.
pub fn build_backend(
    spec: &ModelSpec,
    weights: &[u8],
    cfg: &DeviceConfig,
) -> Result<Box<dyn Backend>> {
    Ok(match cfg.engine()? {
        Engine::Tch => Box::new(TchBackend::from_bytes(spec, weights, cfg)?),
        Engine::Onnx => Box::new(crate::onnx::OrtBackend::from_bytes(spec, weights, cfg)?),
    })
}

/// Hex SHA-256 of a weights file's bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Reads a weights file whole, for [`TchBackend::from_bytes`].
pub fn read_weights(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        tracing::warn!(path = %path.display(), error = %e, "cannot read model weights");
        Error::ModelLoad(format!("the weights file cannot be read ({})", e.kind()))
    })
}

/// Builds the network from safetensors bytes into a var store, checking
/// that every variable is present with the right shape. The bytes are the
/// ones hashed: what is served is what was checked. Messages name no file
/// (they reach clients).
pub fn load_network(
    weights: &[u8],
    class_names: &[String],
    device: Device,
) -> Result<(nn::VarStore, EfficientNetLite0, Vec<String>)> {
    let st = safetensors::SafeTensors::deserialize(weights)
        .map_err(|e| Error::ModelLoad(format!("the weights are not a safetensors file: {e}")))?;
    let named: std::collections::HashMap<String, Tensor> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            Tensor::try_from(view)
                .map(|t| (name.clone(), t))
                .map_err(|e| Error::ModelLoad(format!("tensor {name} of the weights: {e}")))
        })
        .collect::<Result<_>>()?;
    let fc = named.get("_fc.weight").ok_or_else(|| {
        Error::ModelLoad("the weights have no _fc.weight: not EfficientNet-Lite0 weights".into())
    })?;
    let num_classes = fc.size()[0];
    // Fine-tuned models carry an embedding layer: it sets the feature width.
    let embed_dim = named.get("_embed.weight").map_or(0, |w| w.size()[0]);
    let class_names: Vec<String> = if class_names.is_empty() {
        if num_classes != 1000 {
            return Err(Error::ModelLoad(format!(
                "the weights have {num_classes} classes: give their class names"
            )));
        }
        cbir_api::imagenet_class_names()
            .iter()
            .map(|s| (*s).to_string())
            .collect()
    } else {
        class_names.to_vec()
    };
    if class_names.len() as i64 != num_classes {
        return Err(Error::ModelLoad(format!(
            "{} class names given for weights with {num_classes} classes",
            class_names.len()
        )));
    }
    let mut vs = nn::VarStore::new(device);
    let net = if embed_dim > 0 {
        EfficientNetLite0::with_embedding(&vs.root(), num_classes, embed_dim)
    } else {
        EfficientNetLite0::new(&vs.root(), num_classes)
    };
    let mut vars = vs.variables();
    for (name, var) in vars.iter_mut() {
        let src = named
            .get(name)
            .ok_or_else(|| Error::ModelLoad(format!("the weights lack tensor {name}")))?;
        if src.size() != var.size() {
            return Err(Error::ModelLoad(format!(
                "tensor {name} has shape {:?} in the weights, the network needs {:?}",
                src.size(),
                var.size()
            )));
        }
        tch::no_grad(|| var.f_copy_(&src.to_kind(var.kind())))
            .map_err(|e| Error::ModelLoad(format!("copying {name}: {e}")))?;
    }
    vs.freeze();
    Ok((vs, net, class_names))
}

pub struct TchBackend {
    vs: nn::VarStore,
    net: EfficientNetLite0,
    fused: Option<FusedEfficientNet>,
    device: Device,
    kind: Kind,
    channels_last: bool,
    /// Pad each batch to a power of two (see [`batch_bucket`]): on by
    /// default on CUDA.
    pub pad_batches: bool,
    meta: Arc<ModelMeta>,
}

/// The batch size a batch of `n` runs as on CUDA: the next power of two.
/// libtorch builds cuDNN execution plans for each new input shape and keeps
/// them per thread; on an H200, gRPC with batching on (sizes 1 to 32 as
/// clients come) ran at 2–9 images/s in 3-second runs against 380–440 with
/// batching off (docs/BENCHMARKS.md, "GPU"). Powers of two leave six shapes
/// up to 32, which [`Backend::warm_up`] runs on the serving thread before
/// it serves; the padding costs at most as much work again, which a GPU
/// has to spare at these sizes.
pub fn batch_bucket(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

impl TchBackend {
    /// Reads `spec.weights` and builds the model from it.
    pub fn load(spec: &ModelSpec, cfg: &DeviceConfig) -> Result<Self> {
        Self::from_bytes(spec, &read_weights(&spec.weights)?, cfg)
    }

    /// Builds the model from the bytes of its weights file (`spec.weights`
    /// is only reported as the source).
    pub fn from_bytes(spec: &ModelSpec, weights: &[u8], cfg: &DeviceConfig) -> Result<Self> {
        let (device, kind) = cfg.resolve()?;
        let (mut vs, net, class_names) = load_network(weights, &spec.class_names, device)?;
        let fused = cfg.fuse.then(|| {
            let mut f = FusedEfficientNet::from_trained(&net);
            if kind != Kind::Float {
                f.to_kind(kind);
            }
            f
        });
        if cfg.channels_last {
            // NHWC weights so that oneDNN/cuDNN keep the whole net channels-last.
            tch::no_grad(|| {
                for (_, mut v) in vs.variables() {
                    if v.dim() == 4 {
                        let cl = v.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                        v.set_data(&cl);
                    }
                }
            });
        }
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        let meta = Arc::new(ModelMeta {
            name: spec.name.clone(),
            version: spec.version.clone(),
            architecture: "efficientnet-lite0".into(),
            class_names: Arc::new(class_names),
            embedding_dim: net.embedding_dim() as usize,
            device: format!("{device:?}").to_lowercase(),
            dtype: cfg.dtype.clone(),
            backend: Engine::Tch.name().into(),
            source: spec.weights.display().to_string(),
            weights_sha256: sha256_hex(weights),
            loaded_at_ms: now_ms(),
        });
        Ok(Self {
            vs,
            net,
            fused,
            device,
            kind,
            channels_last: cfg.channels_last,
            pad_batches: device.is_cuda(),
            meta,
        })
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Features and logits of an already scaled NCHW float batch.
    pub fn forward_nchw(&self, x: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let x = x.to_device(self.device).to_kind(self.kind);
            // The served path: fused when configured.
            let out: Output = match &self.fused {
                Some(f) => f.forward_nhwc(&x.permute([0, 2, 3, 1])),
                None => self.net.forward_all_t(&x, false),
            };
            (
                out.features.to_kind(Kind::Float),
                out.logits.to_kind(Kind::Float),
            )
        })
    }
}

pub use cbir_common::time::now_ms;

impl Backend for TchBackend {
    fn infer(&mut self, inputs: &[&[u8]]) -> std::result::Result<Vec<RawOutput>, String> {
        let side = INPUT_SIZE as usize;
        let n = inputs.len();
        crate::batcher::check_inputs(inputs)?;
        let run = if self.pad_batches { batch_bucket(n) } else { n };
        let mut buf = inputs.concat();
        if let Some(last) = inputs.last().filter(|_| run > n) {
            // Copies of the last crop fill the bucket; their outputs are
            // dropped below.
            buf.reserve((run - n) * last.len());
            for _ in n..run {
                buf.extend_from_slice(last);
            }
        }
        tch::no_grad(|| {
            let t = Tensor::f_from_slice(&buf)
                .and_then(|t| t.f_view([run as i64, side as i64, side as i64, 3]))
                .map_err(|e| e.to_string())?
                .to_device(self.device);
            let out = match &self.fused {
                Some(f) => {
                    let x = ((t.to_kind(Kind::Float) - 127.0) / 128.0).to_kind(self.kind);
                    f.forward_nhwc(&x)
                }
                None => {
                    let x = input_from_nhwc_u8(&t, self.channels_last, self.kind);
                    self.net.forward_all_t(&x, false)
                }
            };
            let feats = out.features.to_kind(Kind::Float);
            let norm = feats.norm_scalaropt_dim(2.0, [1i64], true).clamp_min(1e-12);
            let feats = (feats / norm).to_device(Device::Cpu).contiguous();
            let probs = out
                .logits
                .to_kind(Kind::Float)
                .softmax(-1, Kind::Float)
                .to_device(Device::Cpu)
                .contiguous();
            let feats: Vec<f32> =
                Vec::try_from(feats.flatten(0, -1)).map_err(|e: tch::TchError| e.to_string())?;
            let probs: Vec<f32> =
                Vec::try_from(probs.flatten(0, -1)).map_err(|e: tch::TchError| e.to_string())?;
            let mut out = RawOutput::split(&feats, &probs, run);
            out.truncate(n);
            Ok(out)
        })
    }

    /// On CUDA, one pass at each batch bucket up to `max_batch`'s, so that
    /// no request waits for cuDNN plans of a new shape (built per thread:
    /// this must run on the thread that serves).
    fn warm_up(&mut self, max_batch: usize) -> std::result::Result<(), String> {
        if !self.pad_batches {
            return Ok(());
        }
        let crop = vec![0u8; (INPUT_SIZE * INPUT_SIZE * 3) as usize];
        let mut size = 1;
        while size <= batch_bucket(max_batch) {
            self.infer(&vec![crop.as_slice(); size])?;
            size *= 2;
        }
        Ok(())
    }

    fn meta(&self) -> Arc<ModelMeta> {
        self.meta.clone()
    }

    /// On a CPU the fused tch path is fastest per image at batch 2 and
    /// slower from 4 on (inference-bench, docs/BENCHMARKS.md); a GPU gains
    /// up to large batches, so the configuration decides there.
    fn useful_batch(&self) -> Option<usize> {
        (self.device == Device::Cpu).then_some(2)
    }
}
