//! Writes the fused serving network as an ONNX graph, from the same folded
//! weights the tch fused path runs, so that a fine-tuned model is served by
//! ONNX Runtime without Python or an exporter in between.
//!
//! The graph takes the network's input as the tch path and the PyTorch
//! reference do, `[N, 3, 224, 224]` floats scaled to [-1, 1] by
//! (x - 127) / 128 ([`scale_nchw`]), and gives what the service answers
//! with: the unit-length searched feature, the softmax over the classes,
//! and the raw logits (for parity checks). The scaling is done by the
//! caller in the same pass that lays the bytes out as planes: in the graph
//! it costs three more passes over the image (transpose, cast, scale).

use cbir_api::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use prost::Message;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{FusedConv, FusedEfficientNet, COSINE_SCALE};
use cbir_imaging::INPUT_SIZE;

/// Input and output names of the written graph.
pub const INPUT: &str = "input";
pub const FEATURES: &str = "features";
pub const PROBABILITIES: &str = "probabilities";
pub const LOGITS: &str = "logits";

/// ONNX opset the graph uses (ReduceL2 still takes `axes` as an attribute).
const OPSET: i64 = 17;
/// IR version 8 (ONNX 1.10+): every ONNX Runtime since 1.10 reads it.
const IR_VERSION: i64 = 8;

struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next: usize,
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

/// Values of a float tensor, row-major, on the CPU.
fn floats(t: &Tensor) -> Result<Vec<f32>> {
    let t = t
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous()
        .flatten(0, -1);
    Vec::<f32>::try_from(&t).map_err(|e| Error::ModelLoad(format!("reading weights: {e}")))
}

impl Builder {
    fn name(&mut self, stem: &str) -> String {
        self.next += 1;
        format!("{stem}_{}", self.next)
    }

    fn init_f32(&mut self, stem: &str, dims: &[i64], data: &[f32]) -> String {
        let name = self.name(stem);
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(DataType::Float as i32),
            name: Some(name.clone()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    fn init_tensor(&mut self, stem: &str, t: &Tensor) -> Result<String> {
        let dims = t.size();
        let data = floats(t)?;
        Ok(self.init_f32(stem, &dims, &data))
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.name(&op.to_lowercase());
        self.node_to(op, inputs, attrs, &out);
        out
    }

    fn node_to(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, out: &str) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_string()).collect(),
            output: vec![out.to_string()],
            name: Some(format!("{op}_{}", self.nodes.len())),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// ReLU6 as Clip(0, 6): ONNX Runtime fuses it into the convolution.
    fn relu6(&mut self, x: &str, lo: &str, hi: &str) -> String {
        self.node("Clip", &[x, lo, hi], vec![])
    }

    /// A folded convolution on an NCHW activation of spatial size `size`;
    /// returns the output and its size. TensorFlow "SAME" padding becomes
    /// explicit (possibly asymmetric) pads: extra pixel right and bottom.
    fn conv(&mut self, x: &str, conv: &FusedConv, size: i64) -> Result<(String, i64)> {
        match conv {
            FusedConv::Pointwise { wt, b } => {
                // wt is [cin, cout]; ONNX wants [cout, cin, 1, 1].
                let s = wt.size();
                let w = wt.tr().contiguous().view([s[1], s[0], 1, 1]);
                let w = self.init_tensor("w", &w)?;
                let b = self.init_tensor("b", b)?;
                let y = self.node(
                    "Conv",
                    &[x, &w, &b],
                    vec![attr_ints("kernel_shape", &[1, 1])],
                );
                Ok((y, size))
            }
            FusedConv::Spatial {
                w,
                b,
                stride,
                kernel,
                groups,
            } => {
                let out = (size + stride - 1) / stride;
                let total = ((out - 1) * stride + kernel - size).max(0);
                let (begin, end) = (total / 2, total - total / 2);
                let w = self.init_tensor("w", w)?;
                let b = self.init_tensor("b", b)?;
                let y = self.node(
                    "Conv",
                    &[x, &w, &b],
                    vec![
                        attr_ints("kernel_shape", &[*kernel, *kernel]),
                        attr_ints("strides", &[*stride, *stride]),
                        attr_ints("pads", &[begin, begin, end, end]),
                        attr_int("group", *groups),
                    ],
                );
                Ok((y, out))
            }
        }
    }
}

fn value_info(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                None => tensor_shape_proto::dimension::Value::DimParam("batch".into()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        doc_string: None,
    }
}

/// Lays `[224, 224, 3]` RGB crops out as the graph's input, `[N, 3, 224,
/// 224]` floats (x - 127) / 128, into `out` (resized to fit). Each crop
/// must have 224 * 224 * 3 bytes.
pub fn scale_nchw(crops: &[&[u8]], out: &mut Vec<f32>) {
    let side = INPUT_SIZE as usize;
    let plane = side * side;
    out.resize(crops.len() * plane * 3, 0.0);
    for (img, x) in crops.iter().zip(out.chunks_exact_mut(plane * 3)) {
        let (r, rest) = x.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (((px, r), g), b) in img.chunks_exact(3).zip(r).zip(g).zip(b) {
            *r = (f32::from(px[0]) - 127.0) * (1.0 / 128.0);
            *g = (f32::from(px[1]) - 127.0) * (1.0 / 128.0);
            *b = (f32::from(px[2]) - 127.0) * (1.0 / 128.0);
        }
    }
}

/// Facts about the model recorded in the graph's metadata.
#[derive(Debug, Clone)]
pub struct GraphInfo<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub weights_sha256: &'a str,
}

/// The encoded ONNX model of `net` (f32 weights, any batch size).
pub fn to_onnx(net: &FusedEfficientNet, info: &GraphInfo<'_>) -> Result<Vec<u8>> {
    tch::no_grad(|| build(net, info)).map(|m| m.encode_to_vec())
}

fn build(net: &FusedEfficientNet, info: &GraphInfo<'_>) -> Result<ModelProto> {
    let mut g = Builder {
        nodes: Vec::new(),
        initializers: Vec::new(),
        next: 0,
    };
    let side = INPUT_SIZE as i64;
    let lo = g.init_f32("zero", &[], &[0.0]);
    let hi = g.init_f32("six", &[], &[6.0]);
    // The tch path feeds the stem (x - 127) / 128 with zero padding. Here
    // the scaling is folded into the stem's weights and the padding value
    // becomes 127 (a scaled 0), so the bytes are transposed and padded as
    // bytes and converted once: no float passes over the image before it.
    let (y, mut size) = g.conv(INPUT, &net.stem, side)?;
    let mut x = g.relu6(&y, &lo, &hi);
    for b in &net.blocks {
        let mut y = x.clone();
        if let Some(e) = &b.expand {
            let (e, _) = g.conv(&y, e, size)?;
            y = g.relu6(&e, &lo, &hi);
        }
        let (d, out) = g.conv(&y, &b.depthwise, size)?;
        let y = g.relu6(&d, &lo, &hi);
        let (y, _) = g.conv(&y, &b.project, out)?;
        x = if b.residual {
            g.node("Add", &[&y, &x], vec![])
        } else {
            y
        };
        size = out;
    }
    let (h, _) = g.conv(&x, &net.head, size)?;
    let h = g.relu6(&h, &lo, &hi);
    let pooled = g.node("GlobalAveragePool", &[&h], vec![]);
    let mut features = g.node("Flatten", &[&pooled], vec![attr_int("axis", 1)]);
    if let Some((w, b)) = &net.embed {
        let w = g.init_tensor("embed_w", w)?;
        let b = g.init_tensor("embed_b", b)?;
        features = g.node("Gemm", &[&features, &w, &b], vec![attr_int("transB", 1)]);
    }
    // Unit length, as the index stores it: f / max(|f|, 1e-12).
    let norm = g.node(
        "ReduceL2",
        &[&features],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
    );
    let eps = g.init_f32("eps", &[], &[1e-12]);
    let norm = g.node("Max", &[&norm, &eps], vec![]);
    g.node_to("Div", &[&features, &norm], vec![], FEATURES);
    match &net.fc_b {
        Some(b) => {
            let w = g.init_tensor("fc_w", &net.fc_w)?;
            let b = g.init_tensor("fc_b", b)?;
            g.node_to(
                "Gemm",
                &[&features, &w, &b],
                vec![attr_int("transB", 1)],
                LOGITS,
            );
        }
        None => {
            // Cosine classifier: rows of fc_w are unit already.
            let wt = net.fc_w.tr().contiguous().to_kind(Kind::Float);
            let wt = g.init_tensor("fc_wt", &wt)?;
            let cos = g.node("MatMul", &[FEATURES, &wt], vec![]);
            let s = g.init_f32("cosine_scale", &[], &[COSINE_SCALE as f32]);
            g.node_to("Mul", &[&cos, &s], vec![], LOGITS);
        }
    }
    g.node_to(
        "Softmax",
        &[LOGITS],
        vec![attr_int("axis", 1)],
        PROBABILITIES,
    );

    let classes = net.fc_w.size()[0];
    let dim = net
        .embed
        .as_ref()
        .map_or(crate::model::FEATURE_DIM, |(w, _)| w.size()[0]);
    let graph = GraphProto {
        node: g.nodes,
        name: Some("efficientnet_lite0_fused".into()),
        initializer: g.initializers,
        input: vec![value_info(
            INPUT,
            DataType::Float,
            &[None, Some(3), Some(side), Some(side)],
        )],
        output: vec![
            value_info(FEATURES, DataType::Float, &[None, Some(dim)]),
            value_info(PROBABILITIES, DataType::Float, &[None, Some(classes)]),
            value_info(LOGITS, DataType::Float, &[None, Some(classes)]),
        ],
        doc_string: Some(
            "EfficientNet-Lite0 with BatchNorm folded into the convolutions; input RGB NCHW \
             scaled by (x - 127) / 128, outputs the unit-length searched feature, class \
             probabilities and logits"
                .into(),
        ),
        value_info: vec![],
    };
    let meta = |k: &str, v: &str| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("cbir-inference".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: None,
        doc_string: None,
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        metadata_props: vec![
            meta("model_name", info.model_name),
            meta("model_version", info.model_version),
            meta("weights_sha256", info.weights_sha256),
        ],
    })
}
