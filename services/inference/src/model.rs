//! EfficientNet-Lite0 written natively in `tch::nn`, so it can be loaded from
//! the ImageNet weights and fine-tuned later.
//!
//! It mirrors `efficientnet_lite_pytorch` (the reference the weights come
//! from): TensorFlow "SAME" padding (asymmetric for stride 2: the extra pixel
//! goes right and bottom), BatchNorm eps 1e-3, ReLU6, no squeeze-excite, and
//! unscaled stem and head. Variable names equal the reference state dict
//! (`_blocks.3._bn1.running_var`, ...), so its weights load directly.

use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Width of the pooled feature.
pub const FEATURE_DIM: i64 = 1280;
const BN_EPS: f64 = 1e-3;
// PyTorch momentum = 1 - TensorFlow's 0.99.
const BN_MOMENTUM: f64 = 0.01;
pub const DROPOUT: f64 = 0.2;

/// (repeats, kernel, stride, expand ratio, in, out) of the seven stages.
const STAGES: [(usize, i64, i64, i64, i64, i64); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// A bias-free convolution with TensorFlow "SAME" padding.
#[derive(Debug)]
struct SameConv {
    weight: Tensor,
    stride: i64,
    groups: i64,
    kernel: i64,
}

impl SameConv {
    fn new(p: nn::Path, cin: i64, cout: i64, kernel: i64, stride: i64, groups: i64) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            groups,
            bias: false,
            ..Default::default()
        };
        let conv = nn::conv2d(p, cin, cout, kernel, cfg);
        Self {
            weight: conv.ws,
            stride,
            groups,
            kernel,
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let (h, w) = {
            let s = xs.size();
            (s[2], s[3])
        };
        let pad = |i: i64| {
            let o = (i + self.stride - 1) / self.stride;
            ((o - 1) * self.stride + self.kernel - i).max(0)
        };
        let (ph, pw) = (pad(h), pad(w));
        if ph % 2 == 0 && pw % 2 == 0 {
            // Symmetric: let the convolution pad, no extra copy.
            xs.conv2d(
                &self.weight,
                None::<Tensor>,
                [self.stride, self.stride],
                [ph / 2, pw / 2],
                [1, 1],
                self.groups,
            )
        } else {
            let padded = xs.constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2]);
            padded.conv2d(
                &self.weight,
                None::<Tensor>,
                [self.stride, self.stride],
                [0, 0],
                [1, 1],
                self.groups,
            )
        }
    }
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(
        p,
        c,
        nn::BatchNormConfig {
            eps: BN_EPS,
            momentum: BN_MOMENTUM,
            ..Default::default()
        },
    )
}

#[derive(Debug)]
struct MbConv {
    expand: Option<(SameConv, nn::BatchNorm)>,
    depthwise: SameConv,
    bn1: nn::BatchNorm,
    project: SameConv,
    bn2: nn::BatchNorm,
    residual: bool,
}

impl MbConv {
    fn new(p: nn::Path, cin: i64, cout: i64, kernel: i64, stride: i64, expand: i64) -> Self {
        let mid = cin * expand;
        let expand = (expand != 1).then(|| {
            (
                SameConv::new(&p / "_expand_conv", cin, mid, 1, 1, 1),
                bn(&p / "_bn0", mid),
            )
        });
        Self {
            expand,
            depthwise: SameConv::new(&p / "_depthwise_conv", mid, mid, kernel, stride, mid),
            bn1: bn(&p / "_bn1", mid),
            project: SameConv::new(&p / "_project_conv", mid, cout, 1, 1, 1),
            bn2: bn(&p / "_bn2", cout),
            residual: stride == 1 && cin == cout,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = match &self.expand {
            Some((conv, bn)) => conv.forward(xs).apply_t(bn, train).relu6(),
            None => xs.shallow_clone(),
        };
        x = self.depthwise.forward(&x).apply_t(&self.bn1, train).relu6();
        x = self.project.forward(&x).apply_t(&self.bn2, train);
        // The reference uses drop-connect only in training; the ImageNet
        // weights were trained with it, fine-tuning here does without.
        if self.residual {
            x + xs
        } else {
            x
        }
    }
}

/// Scale of the cosine classifier of fine-tuned models (NormFace): the
/// logits of unit vectors live in [-1, 1], too flat for a softmax.
pub const COSINE_SCALE: f64 = 16.0;

/// The classifier on the searched feature.
#[derive(Debug)]
enum Classifier {
    /// The ImageNet head: dropout, then a linear layer.
    Linear(nn::Linear),
    /// Fine-tuned models: `COSINE_SCALE` times the cosine between the
    /// feature and each class's weight vector (`_fc.weight`, no bias), so
    /// training shapes exactly the angles the index searches by.
    Cosine(Tensor),
}

/// The network: convolutional trunk, global average pool, an optional
/// embedding layer (fine-tuned models; it is then the searched feature) and
/// the classifier.
#[derive(Debug)]
pub struct EfficientNetLite0 {
    stem: SameConv,
    bn0: nn::BatchNorm,
    blocks: Vec<MbConv>,
    head: SameConv,
    bn1: nn::BatchNorm,
    embed: Option<nn::Linear>,
    fc: Classifier,
    num_classes: i64,
}

/// What one forward pass gives per image.
#[derive(Debug)]
pub struct Output {
    /// Pooled trunk output `[N, 1280]`, before the classifier's dropout.
    pub features: Tensor,
    /// Classifier output `[N, classes]`.
    pub logits: Tensor,
}

impl EfficientNetLite0 {
    /// Builds the variables under `p` (use the var store's root so that the
    /// names match the reference weights). The classifier lives under `_fc`.
    pub fn new(p: &nn::Path, num_classes: i64) -> Self {
        Self::build(p, num_classes, 0)
    }

    /// A fine-tunable variant for retrieval: a `dim`-wide embedding layer
    /// (`_embed`) after the pool, which becomes the searched feature, and a
    /// cosine classifier on it.
    pub fn with_embedding(p: &nn::Path, num_classes: i64, dim: i64) -> Self {
        Self::build(p, num_classes, dim)
    }

    fn build(p: &nn::Path, num_classes: i64, embed_dim: i64) -> Self {
        let stem = SameConv::new(p / "_conv_stem", 3, 32, 3, 2, 1);
        let bn0 = bn(p / "_bn0", 32);
        let mut blocks = Vec::new();
        for (repeats, k, s, e, cin, cout) in STAGES {
            for r in 0..repeats {
                let (cin, s) = if r == 0 { (cin, s) } else { (cout, 1) };
                let i = blocks.len();
                blocks.push(MbConv::new(p / "_blocks" / i, cin, cout, k, s, e));
            }
        }
        let head = SameConv::new(p / "_conv_head", 320, FEATURE_DIM, 1, 1, 1);
        let bn1 = bn(p / "_bn1", FEATURE_DIM);
        let (embed, fc) = if embed_dim > 0 {
            let embed = nn::linear(p / "_embed", FEATURE_DIM, embed_dim, Default::default());
            let w = (p / "_fc").var(
                "weight",
                &[num_classes, embed_dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
            );
            (Some(embed), Classifier::Cosine(w))
        } else {
            let fc = nn::linear(p / "_fc", FEATURE_DIM, num_classes, Default::default());
            (None, Classifier::Linear(fc))
        };
        Self {
            stem,
            bn0,
            blocks,
            head,
            bn1,
            embed,
            fc,
            num_classes,
        }
    }

    /// Width of the searched feature.
    pub fn embedding_dim(&self) -> i64 {
        self.embed.as_ref().map_or(FEATURE_DIM, |e| e.ws.size()[0])
    }

    /// The searched feature from the pooled one: the embedding layer when
    /// there is one (dropout before it while training), else the pool.
    pub fn embed_t(&self, pooled: &Tensor, train: bool) -> Tensor {
        match &self.embed {
            Some(e) => pooled.dropout(DROPOUT, train).apply(e),
            None => pooled.shallow_clone(),
        }
    }

    pub fn num_classes(&self) -> i64 {
        self.num_classes
    }

    /// Pooled features `[N, 1280]` of a `[N, 3, H, W]` batch scaled to [-1, 1].
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = self.stem.forward(xs).apply_t(&self.bn0, train).relu6();
        for b in &self.blocks {
            x = b.forward_t(&x, train);
        }
        x = self.head.forward(&x).apply_t(&self.bn1, train).relu6();
        x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    /// The classifier on the searched feature (dropout only when training).
    pub fn classify_t(&self, features: &Tensor, train: bool) -> Tensor {
        match &self.fc {
            Classifier::Linear(fc) => features.dropout(DROPOUT, train).apply(fc),
            Classifier::Cosine(w) => cosine_logits(features, w),
        }
    }

    /// Number of MBConv blocks (16).
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Activations after the stem and blocks `..upto`: what fine-tuning
    /// caches so that only the blocks after it are run per step.
    pub fn trunk_t(&self, xs: &Tensor, upto: usize, train: bool) -> Tensor {
        let mut x = self.stem.forward(xs).apply_t(&self.bn0, train).relu6();
        for b in self.blocks.iter().take(upto) {
            x = b.forward_t(&x, train);
        }
        x
    }

    /// Pooled features `[N, 1280]` from the output of `trunk_t(.., from, ..)`:
    /// blocks `from..`, the head convolution and the pool.
    pub fn tail_features_t(&self, x: &Tensor, from: usize, train: bool) -> Tensor {
        let mut x = x.shallow_clone();
        for b in self.blocks.iter().skip(from) {
            x = b.forward_t(&x, train);
        }
        x = self.head.forward(&x).apply_t(&self.bn1, train).relu6();
        x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    pub fn forward_all_t(&self, xs: &Tensor, train: bool) -> Output {
        let features = self.embed_t(&self.features_t(xs, train), train);
        let logits = self.classify_t(&features, train);
        Output { features, logits }
    }
}

impl ModuleT for EfficientNetLite0 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_all_t(xs, train).logits
    }
}

fn unit_rows(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [1i64], true).clamp_min(1e-12)
}

fn cosine_logits(features: &Tensor, w: &Tensor) -> Tensor {
    unit_rows(features).mm(&unit_rows(w).tr()) * COSINE_SCALE
}

/// Folds a BatchNorm into the preceding bias-free convolution:
/// w' = w * g / sqrt(var + eps), b' = beta - mean * g / sqrt(var + eps).
fn fold(conv: &SameConv, bn: &nn::BatchNorm) -> (Tensor, Tensor) {
    let var = bn.running_var.shallow_clone();
    let scale = bn
        .ws
        .as_ref()
        .map_or_else(|| var.ones_like(), Tensor::shallow_clone)
        / (var + BN_EPS).sqrt();
    let mean = bn.running_mean.shallow_clone();
    let beta = bn
        .bs
        .as_ref()
        .map_or_else(|| mean.zeros_like(), Tensor::shallow_clone);
    let w = &conv.weight * scale.view([-1, 1, 1, 1]);
    let b = beta - mean * &scale;
    (w, b)
}

/// A convolution with its BatchNorm folded in, laid out for NHWC inference.
#[derive(Debug)]
pub(crate) enum FusedConv {
    /// 1x1, stride 1: a matrix product over the channel axis, `wt` is
    /// `[cin, cout]`.
    Pointwise { wt: Tensor, b: Tensor },
    /// k x k (stem and depthwise) with channels-last weights.
    Spatial {
        w: Tensor,
        b: Tensor,
        stride: i64,
        kernel: i64,
        groups: i64,
    },
}

impl FusedConv {
    fn new(conv: &SameConv, bn: &nn::BatchNorm) -> Self {
        let (w, b) = fold(conv, bn);
        if conv.kernel == 1 && conv.stride == 1 && conv.groups == 1 {
            let s = w.size();
            FusedConv::Pointwise {
                wt: w.view([s[0], s[1]]).tr().contiguous(),
                b,
            }
        } else {
            FusedConv::Spatial {
                w: w.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]),
                b,
                stride: conv.stride,
                kernel: conv.kernel,
                groups: conv.groups,
            }
        }
    }

    /// `x` is NHWC and contiguous; so is the result.
    fn forward(&self, x: &Tensor, relu6: bool) -> Tensor {
        let s = x.size();
        let (n, h, w, c) = (s[0], s[1], s[2], s[3]);
        let mut y = match self {
            FusedConv::Pointwise { wt, b } => {
                b.addmm(&x.view([n * h * w, c]), wt).view([n, h, w, -1])
            }
            FusedConv::Spatial {
                w: weight,
                b,
                stride,
                kernel,
                groups,
            } => {
                let pad = |i: i64| {
                    let o = (i + stride - 1) / stride;
                    ((o - 1) * stride + kernel - i).max(0)
                };
                let (ph, pw) = (pad(h), pad(w));
                // A permuted NHWC tensor is NCHW with channels-last strides.
                let xn = x.permute([0, 3, 1, 2]);
                let y = if ph % 2 == 0 && pw % 2 == 0 {
                    xn.conv2d(
                        weight,
                        Some(b),
                        [*stride, *stride],
                        [ph / 2, pw / 2],
                        [1, 1],
                        *groups,
                    )
                } else {
                    xn.constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2])
                        .conv2d(weight, Some(b), [*stride, *stride], [0, 0], [1, 1], *groups)
                };
                y.permute([0, 2, 3, 1]).contiguous()
            }
        };
        if relu6 {
            let _ = y.clamp_(0.0, 6.0);
        }
        y
    }
}

#[derive(Debug)]
pub(crate) struct FusedBlock {
    pub(crate) expand: Option<FusedConv>,
    pub(crate) depthwise: FusedConv,
    pub(crate) project: FusedConv,
    pub(crate) residual: bool,
}

/// The network prepared for inference only: every BatchNorm folded into its
/// convolution, activations kept NHWC, 1x1 convolutions as matrix products,
/// ReLU6 in place. Same numbers as `EfficientNetLite0` in eval mode, about
/// twice as fast on a CPU.
#[derive(Debug)]
pub struct FusedEfficientNet {
    pub(crate) stem: FusedConv,
    pub(crate) blocks: Vec<FusedBlock>,
    pub(crate) head: FusedConv,
    /// `_embed` weight and bias, when the model has the layer.
    pub(crate) embed: Option<(Tensor, Tensor)>,
    pub(crate) fc_w: Tensor,
    /// None: a cosine classifier (`fc_w` rows already unit length).
    pub(crate) fc_b: Option<Tensor>,
}

impl FusedEfficientNet {
    pub fn from_trained(net: &EfficientNetLite0) -> Self {
        tch::no_grad(|| Self {
            stem: FusedConv::new(&net.stem, &net.bn0),
            blocks: net
                .blocks
                .iter()
                .map(|b| FusedBlock {
                    expand: b.expand.as_ref().map(|(c, bn)| FusedConv::new(c, bn)),
                    depthwise: FusedConv::new(&b.depthwise, &b.bn1),
                    project: FusedConv::new(&b.project, &b.bn2),
                    residual: b.residual,
                })
                .collect(),
            head: FusedConv::new(&net.head, &net.bn1),
            embed: net.embed.as_ref().map(|e| {
                (
                    e.ws.copy(),
                    e.bs.as_ref().map_or_else(
                        || Tensor::zeros([e.ws.size()[0]], (tch::Kind::Float, e.ws.device())),
                        Tensor::copy,
                    ),
                )
            }),
            fc_w: match &net.fc {
                Classifier::Linear(fc) => fc.ws.copy(),
                Classifier::Cosine(w) => unit_rows(w),
            },
            fc_b: match &net.fc {
                Classifier::Linear(fc) => Some(fc.bs.as_ref().map_or_else(
                    || Tensor::zeros([net.num_classes], (tch::Kind::Float, fc.ws.device())),
                    Tensor::copy,
                )),
                Classifier::Cosine(_) => None,
            },
        })
    }

    /// Converts the weights to `kind` (e.g. bf16 on CUDA).
    pub fn to_kind(&mut self, kind: tch::Kind) {
        let conv = |c: &mut FusedConv| match c {
            FusedConv::Pointwise { wt, b } => {
                *wt = wt.to_kind(kind);
                *b = b.to_kind(kind);
            }
            FusedConv::Spatial { w, b, .. } => {
                *w = w.to_kind(kind);
                *b = b.to_kind(kind);
            }
        };
        conv(&mut self.stem);
        conv(&mut self.head);
        for b in &mut self.blocks {
            if let Some(e) = &mut b.expand {
                conv(e);
            }
            conv(&mut b.depthwise);
            conv(&mut b.project);
        }
        if let Some((w, b)) = &mut self.embed {
            *w = w.to_kind(kind);
            *b = b.to_kind(kind);
        }
        self.fc_w = self.fc_w.to_kind(kind);
        if let Some(b) = &mut self.fc_b {
            *b = b.to_kind(kind);
        }
    }

    /// NHWC activations after the stem and blocks `..upto` of an NHWC batch
    /// scaled to [-1, 1]: the frozen part of a fine-tune, at the fused speed.
    pub fn trunk_nhwc(&self, x: &Tensor, upto: usize) -> Tensor {
        let mut x = self.stem.forward(&x.contiguous(), true);
        for b in self.blocks.iter().take(upto) {
            let y = match &b.expand {
                Some(e) => e.forward(&x, true),
                None => x.shallow_clone(),
            };
            let y = b.depthwise.forward(&y, true);
            let y = b.project.forward(&y, false);
            x = if b.residual { y + x } else { y };
        }
        x
    }

    /// Features and logits of an NHWC batch already scaled to [-1, 1].
    pub fn forward_nhwc(&self, x: &Tensor) -> Output {
        let mut x = self.stem.forward(&x.contiguous(), true);
        for b in &self.blocks {
            let y = match &b.expand {
                Some(e) => e.forward(&x, true),
                None => x.shallow_clone(),
            };
            let y = b.depthwise.forward(&y, true);
            let y = b.project.forward(&y, false);
            x = if b.residual { y + x } else { y };
        }
        let x = self.head.forward(&x, true);
        let pooled = x.mean_dim([1i64, 2].as_slice(), false, x.kind());
        let features = match &self.embed {
            Some((w, b)) => pooled.linear(w, Some(b)),
            None => pooled,
        };
        let logits = match &self.fc_b {
            Some(b) => features.linear(&self.fc_w, Some(b)),
            None => unit_rows(&features).mm(&self.fc_w.tr()) * COSINE_SCALE,
        };
        Output { features, logits }
    }
}

/// Turns a `[N, 224, 224, 3]` u8 (NHWC) batch into the network input:
/// float NCHW scaled by (x - 127) / 128, kept in channels-last memory order
/// when `channels_last` (the NHWC buffer permuted, no copy).
pub fn input_from_nhwc_u8(batch: &Tensor, channels_last: bool, kind: tch::Kind) -> Tensor {
    let x = (batch.to_kind(tch::Kind::Float) - 127.0) / 128.0;
    let x = x.permute([0, 3, 1, 2]);
    let x = if channels_last { x } else { x.contiguous() };
    x.to_kind(kind)
}
