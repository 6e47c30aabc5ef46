//! Step 1: every image decoded once into augmented views, and the frozen
//! trunk's activations before the tuned blocks cached for the later steps.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cbir_imaging::{Limits, INPUT_SIZE};
use cbir_inference::model::FusedEfficientNet;
use rand::SeedableRng;
use tch::{Kind, Tensor};

use super::{check_cancel, Trainer, FINE_TUNE_SPEEDUP};
use crate::augment::{random_view, working_copy, Jitter};
use crate::dataset::{Dataset, Sample};
use crate::error::{Error, Result};

/// Images decoded and run through the trunk at once.
const EXTRACT_BATCH: usize = 32;

/// Cached trunk activations and their labels.
pub(super) struct Cache {
    /// `[rows, C, H, W]` half precision; row = sample * views + view.
    pub(super) maps: Tensor,
    pub(super) labels: Tensor,
    pub(super) views: i64,
}

impl Cache {
    pub(super) fn samples(&self) -> i64 {
        self.labels.size()[0]
    }

    pub(super) fn rows(&self, samples: &[i64], view: i64) -> Tensor {
        let idx: Vec<i64> = samples.iter().map(|s| s * self.views + view).collect();
        let dev = self.maps.device();
        self.maps
            .index_select(0, &Tensor::from_slice(&idx).to_device(dev))
            .to_kind(Kind::Float)
    }
}

/// Progress of the extraction over the training and validation images.
struct Extraction {
    started: Instant,
    done: usize,
    total: usize,
    later_images: f64,
}

impl Trainer<'_, '_> {
    /// The caches of the training images (`augment_views` each) and of the
    /// validation images (the centre view), and the images per second the
    /// extraction went at.
    pub(super) fn extract_views(&mut self) -> Result<(Cache, Cache, f64)> {
        let fused = FusedEfficientNet::from_trained(&self.net);
        let views = self.p.augment_views.max(1) as usize;
        let ds = self.ds;
        let mut run = Extraction {
            started: Instant::now(),
            done: 0,
            total: ds.train.len() * views + ds.validation.len(),
            later_images: self.later_images(),
        };
        let train = self.extract(&fused, &ds.train, views, &mut run)?;
        let val = self.extract(&fused, &ds.validation, 0, &mut run)?;
        drop(fused);
        let rate = run.done as f64 / run.started.elapsed().as_secs_f64().max(1e-3);
        Ok((train, val, rate))
    }

    /// `views` random views of each sample (the centre view when 0)
    /// through the trunk; unreadable images are skipped with the reason.
    fn extract(
        &mut self,
        fused: &FusedEfficientNet,
        samples: &[Sample],
        views: usize,
        run: &mut Extraction,
    ) -> Result<Cache> {
        let (ds, setup, seed) = (self.ds, self.setup, self.p.seed);
        let mut maps = Vec::new();
        let mut labels = Vec::new();
        let indexed: Vec<(usize, &Path)> = samples
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.path.as_path()))
            .collect();
        // Decoding the next chunk overlaps the forward pass of this one.
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            let limits = setup.limits;
            let cancel = setup.cancel;
            let chunks: Vec<&[(usize, &Path)]> = indexed.chunks(EXTRACT_BATCH).collect();
            s.spawn(move || {
                for chunk in chunks {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let decoded = decode_views(ds, chunk, views, seed, &limits);
                    if tx.send((chunk, decoded)).is_err() {
                        break;
                    }
                }
            });
            for (chunk, decoded) in rx {
                check_cancel(setup.cancel)?;
                let mut buf = Vec::new();
                let mut n = 0i64;
                for ((i, path), d) in chunk.iter().zip(decoded) {
                    match d {
                        Ok(vs) => {
                            for v in vs {
                                buf.extend_from_slice(&v);
                                n += 1;
                            }
                            labels.push(samples[*i].class as i64);
                        }
                        Err(why) => self.skipped.push(format!(
                            "{}: {why}",
                            path.strip_prefix(&ds.root).unwrap_or(path).display()
                        )),
                    }
                }
                if n > 0 {
                    maps.push(self.trunk(fused, &buf, n, views));
                }
                run.done += chunk.len() * views.max(1);
                self.report_extraction(run);
            }
            Ok(())
        })?;
        check_cancel(setup.cancel)?;
        if maps.is_empty() {
            return Err(Error::InvalidArgument(
                "no image of the data set could be read".into(),
            ));
        }
        Ok(Cache {
            maps: Tensor::cat(&maps, 0),
            labels: Tensor::from_slice(&labels).to_device(setup.device),
            views: views.max(1) as i64,
        })
    }

    /// The half-precision activations of `n` decoded views (`buf`, HWC
    /// bytes) before the first tuned block; training views are jittered.
    fn trunk(&mut self, fused: &FusedEfficientNet, buf: &[u8], n: i64, views: usize) -> Tensor {
        let side = i64::from(INPUT_SIZE);
        let x = Tensor::from_slice(buf)
            .view([n, side, side, 3])
            .to_device(self.setup.device)
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float);
        let x = if views > 0 {
            Jitter::sample(n as usize, &mut self.rng).apply(&x)
        } else {
            x
        };
        let x = ((x - 127.0) / 128.0).permute([0, 2, 3, 1]);
        // BatchNorm is frozen, so the folded network gives the same
        // activations as the trainable one, about twice as fast.
        tch::no_grad(|| fused.trunk_nhwc(&x, self.from))
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Half)
            .contiguous()
    }

    fn report_extraction(&mut self, run: &Extraction) {
        let (done, total) = (run.done, run.total);
        let secs = run.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        self.progress.phase = format!("extracting features ({done}/{total} images)");
        self.progress.images_per_second = rate;
        self.progress.eta_seconds =
            ((total - done.min(total)) as f64 + run.later_images / FINE_TUNE_SPEEDUP) / rate;
        self.progress.elapsed_seconds = self.clock.secs();
        (self.report)(&self.progress, None);
    }
}

/// Decodes `paths` (of `ds`) on all cores; each gives `views` random views (or the
/// centre view when `views` is 0), or the reason it could not be read.
fn decode_views(
    ds: &Dataset,
    paths: &[(usize, &Path)],
    views: usize,
    seed: u64,
    limits: &Limits,
) -> Vec<std::result::Result<Vec<Vec<u8>>, String>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let per = paths.len().div_ceil(threads).max(1);
    let budget = cbir_imaging::budget::Budget::shared(limits);
    let budget = &budget;
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(i, p)| {
                            // Not through a link swapped in since the scan.
                            let bytes = crate::dataset::read_sample(ds, p)?;
                            let header =
                                cbir_imaging::probe(&bytes, limits).map_err(|e| e.to_string())?;
                            // Training waits as long as it takes: searches
                            // and uploads share the budget and come first.
                            let permit = budget
                                .acquire_blocking(header.peak_bytes(), None)
                                .map_err(|e| e.to_string())?;
                            let d =
                                cbir_imaging::decode(&bytes, limits).map_err(|e| e.to_string())?;
                            let img = working_copy(d.image)?;
                            drop(permit);
                            if views == 0 {
                                return cbir_imaging::preprocess(&img)
                                    .map(|v| vec![v])
                                    .map_err(|e| e.to_string());
                            }
                            let mut rng = rand::rngs::StdRng::seed_from_u64(
                                seed ^ (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                            );
                            (0..views).map(|_| random_view(&img, &mut rng)).collect()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err("decoding panicked".to_string())])
            })
            .collect()
    })
}
