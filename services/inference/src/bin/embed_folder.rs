//! Embeds a folder-per-class image set with the network directly (no
//! services) and writes the features to a file, for offline experiments
//! with search modes and for benchmarks on real features.
//!
//! Output format (little-endian): u32 count, u32 dims, then per image:
//! u16 label length, label bytes, u16 path length, path bytes, i32
//! predicted class, dims x f32 (unit length).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cbir_inference::{Backend, DeviceConfig, ModelSpec, TchBackend};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Folder with one sub-folder per class.
    dir: PathBuf,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    #[arg(
        long,
        env = "CBIR_WEIGHTS",
        default_value = "data/models/efficientnet-lite0-imagenet.safetensors"
    )]
    weights: PathBuf,
    #[arg(long, default_value_t = 16)]
    batch: usize,
}

fn files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    for c in classes {
        let label = c
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut imgs: Vec<PathBuf> = std::fs::read_dir(&c)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        imgs.sort();
        out.extend(imgs.into_iter().map(|p| (label.clone(), p)));
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let list = files(&args.dir).with_context(|| format!("listing {}", args.dir.display()))?;
    let spec = ModelSpec {
        name: "efficientnet-lite0".into(),
        version: "imagenet".into(),
        class_names: vec![],
        weights: args.weights.clone(),
    };
    let mut backend = TchBackend::load(&spec, &DeviceConfig::default())?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args.out)?);
    let mut records: Vec<(String, String, i32, Vec<f32>)> = Vec::new();
    let started = std::time::Instant::now();
    for chunk in list.chunks(args.batch) {
        let mut crops = Vec::new();
        let mut meta = Vec::new();
        for (label, path) in chunk {
            let bytes = std::fs::read(path)?;
            match cbir_imaging::decode(&bytes, &cbir_imaging::Limits::default())
                .and_then(|d| cbir_imaging::preprocess(&d.image))
            {
                Ok(c) => {
                    crops.push(c);
                    let rel = path.strip_prefix(&args.dir).unwrap_or(path);
                    meta.push((label.clone(), rel.display().to_string()));
                }
                Err(e) => eprintln!("skipping {}: {e}", path.display()),
            }
        }
        if crops.is_empty() {
            continue;
        }
        let refs: Vec<&[u8]> = crops.iter().map(Vec::as_slice).collect();
        let outs = backend.infer(&refs).map_err(anyhow::Error::msg)?;
        for ((label, path), o) in meta.into_iter().zip(outs) {
            let class = o
                .probabilities
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as i32);
            records.push((label, path, class, o.feature));
        }
        if records.len() % 512 < args.batch {
            eprintln!(
                "{} / {} images, {:.1} images/s",
                records.len(),
                list.len(),
                records.len() as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let dims = records.first().map_or(0, |r| r.3.len());
    out.write_all(&(records.len() as u32).to_le_bytes())?;
    out.write_all(&(dims as u32).to_le_bytes())?;
    for (label, path, class, f) in &records {
        out.write_all(&(label.len() as u16).to_le_bytes())?;
        out.write_all(label.as_bytes())?;
        out.write_all(&(path.len() as u16).to_le_bytes())?;
        out.write_all(path.as_bytes())?;
        out.write_all(&class.to_le_bytes())?;
        for x in f {
            out.write_all(&x.to_le_bytes())?;
        }
    }
    out.flush()?;
    eprintln!("wrote {} features to {}", records.len(), args.out.display());
    Ok(())
}
