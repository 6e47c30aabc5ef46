//! The network a fine-tune trains: built from the base weights, which of
//! its tensors train, and the trained weights as bytes.

use std::collections::HashMap;
use std::path::Path;

use cbir_inference::model::EfficientNetLite0;
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

pub(super) fn is_trainable(name: &str, from: usize) -> bool {
    if name.ends_with("running_mean") || name.ends_with("running_var") {
        return false;
    }
    if name.starts_with("_fc.")
        || name.starts_with("_embed.")
        || name.starts_with("_conv_head.")
        || name.starts_with("_bn1.")
    {
        return true;
    }
    name.strip_prefix("_blocks.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i >= from)
}

/// Builds the network for `classes` classes from the base weights: every
/// tensor but the classifier is copied; the classifier starts fresh.
pub(super) fn network(
    base: &Path,
    classes: i64,
    embedding_dim: i64,
    device: Device,
) -> Result<(nn::VarStore, EfficientNetLite0)> {
    let named = Tensor::read_safetensors(base).map_err(|e| {
        tracing::error!(path = %base.display(), error = %e, "cannot read the base weights");
        Error::Training(
            "the base weights cannot be read (base_weights; the training service's log names the file)"
                .into(),
        )
    })?;
    let named: HashMap<String, Tensor> = named.into_iter().collect();
    let vs = nn::VarStore::new(device);
    let net = if embedding_dim > 0 {
        EfficientNetLite0::with_embedding(&vs.root(), classes, embedding_dim)
    } else {
        EfficientNetLite0::new(&vs.root(), classes)
    };
    for (name, mut var) in vs.variables() {
        // The new layers start fresh.
        if name.starts_with("_fc.") || name.starts_with("_embed.") {
            continue;
        }
        let src = named.get(&name).ok_or_else(|| {
            Error::Training(format!(
                "the base weights lack tensor {name}: not EfficientNet-Lite0"
            ))
        })?;
        if src.size() != var.size() {
            return Err(Error::Training(format!(
                "tensor {name} has shape {:?} in the base weights, the network needs {:?}",
                src.size(),
                var.size()
            )));
        }
        tch::no_grad(|| var.f_copy_(&src.to_kind(var.kind())))?;
    }
    Ok((vs, net))
}

/// The var store as a safetensors file in memory (f32, CPU).
pub(super) fn safetensors_bytes(vs: &nn::VarStore) -> Result<Vec<u8>> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous(),
            )
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = tempfile_dir()?;
    let path = dir.join(format!("{}.safetensors", uuid::Uuid::new_v4()));
    Tensor::write_safetensors(&named, &path)?;
    let bytes = std::fs::read(&path).map_err(|e| Error::Io(format!("{}: {e}", path.display())));
    let _ = std::fs::remove_file(&path);
    bytes
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join("cbir-training");
    std::fs::create_dir_all(&d).map_err(|e| Error::Io(format!("{}: {e}", d.display())))?;
    Ok(d)
}
