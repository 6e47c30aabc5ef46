//! A job's training parameters: the request's values over the configured
//! defaults, range-checked before anything is queued.

use cbir_api::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a job trains with; zeros in a request mean these defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    /// Train the last three stages (7 blocks) instead of `tune_blocks`.
    pub fine_tune_backbone: bool,
    pub validation_fraction: f64,
    pub seed: u64,
    pub min_images_per_class: u32,
    pub early_stopping_patience: u32,
    pub tune_blocks: u32,
    pub augment_views: u32,
    pub head_epochs: u32,
    /// Width of the embedding layer that becomes the searched feature
    /// (trained with a cosine classifier); 0 keeps the pooled 1280-d feature
    /// and a linear classifier.
    pub embedding_dim: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            epochs: 6,
            batch_size: 32,
            learning_rate: 1e-4,
            fine_tune_backbone: false,
            validation_fraction: 0.1,
            seed: 42,
            min_images_per_class: 100,
            early_stopping_patience: 2,
            tune_blocks: 2,
            augment_views: 2,
            head_epochs: 8,
            embedding_dim: 256,
        }
    }
}

/// Blocks trained when `fine_tune_backbone` is set: stages 5 to 7.
const BACKBONE_BLOCKS: u32 = 7;
const MAX_EPOCHS: u32 = 200;
const MAX_VIEWS: u32 = 8;

/// Refuses `value` of parameter `name` when it is over `max`.
fn at_most(name: &str, value: u32, max: u32) -> Result<()> {
    if value > max {
        return Err(Error::InvalidArgument(format!(
            "{name} {value} is over {max}"
        )));
    }
    Ok(())
}

impl Params {
    /// Fills zeros from `defaults` and checks the ranges.
    pub fn from_request(p: Option<&pb::TrainingParams>, defaults: &Params) -> Result<Self> {
        let d = defaults;
        let Some(p) = p else {
            return Ok(d.clone());
        };
        let or = |v: u32, dv: u32| if v == 0 { dv } else { v };
        let out = Params {
            epochs: or(p.epochs, d.epochs),
            batch_size: or(p.batch_size, d.batch_size),
            learning_rate: if p.learning_rate > 0.0 {
                f64::from(p.learning_rate)
            } else {
                d.learning_rate
            },
            fine_tune_backbone: p.fine_tune_backbone,
            validation_fraction: if p.validation_fraction > 0.0 {
                f64::from(p.validation_fraction)
            } else {
                d.validation_fraction
            },
            seed: if p.seed == 0 { d.seed } else { p.seed },
            min_images_per_class: or(p.min_images_per_class, d.min_images_per_class),
            early_stopping_patience: or(p.early_stopping_patience, d.early_stopping_patience),
            tune_blocks: or(p.tune_blocks, d.tune_blocks),
            augment_views: or(p.augment_views, d.augment_views),
            head_epochs: or(p.head_epochs, d.head_epochs),
            embedding_dim: or(p.embedding_dim, d.embedding_dim),
        };
        out.check()?;
        Ok(out)
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        at_most("epochs", self.epochs, MAX_EPOCHS)?;
        if !(2..=512).contains(&self.batch_size) {
            return bad(format!("batch_size {} is outside 2..512", self.batch_size));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return bad(format!(
                "learning_rate {} is outside (0, 1]",
                self.learning_rate
            ));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 0.9) {
            return bad(format!(
                "validation_fraction {} is outside (0, 0.9)",
                self.validation_fraction
            ));
        }
        at_most("tune_blocks", self.tune_blocks, 16)?;
        at_most("augment_views", self.augment_views, MAX_VIEWS)?;
        at_most("embedding_dim", self.embedding_dim, 4096)?;
        at_most("head_epochs", self.head_epochs, MAX_EPOCHS)
    }

    pub fn to_proto(&self) -> pb::TrainingParams {
        pb::TrainingParams {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate as f32,
            fine_tune_backbone: self.fine_tune_backbone,
            validation_fraction: self.validation_fraction as f32,
            seed: self.seed,
            min_images_per_class: self.min_images_per_class,
            early_stopping_patience: self.early_stopping_patience,
            tune_blocks: self.tune_blocks,
            augment_views: self.augment_views,
            head_epochs: self.head_epochs,
            embedding_dim: self.embedding_dim,
        }
    }

    pub(super) fn blocks_to_tune(&self) -> u32 {
        if self.fine_tune_backbone {
            self.tune_blocks.max(BACKBONE_BLOCKS)
        } else {
            self.tune_blocks
        }
    }
}
