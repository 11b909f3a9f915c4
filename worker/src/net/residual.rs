//! The residual encoder of nnU-Net's Residual Encoder presets (dynamic-network-architectures
//! `building_blocks/residual.py::BasicBlockD`, `StackedResidualBlocks`, and
//! `building_blocks/residual_encoders.py::ResidualEncoder`).
//!
//! A BasicBlockD (ResNet-D) computes `LeakyReLU(conv2(conv1(x)) + skip(x))` where conv1 is
//! conv-norm-LeakyReLU carrying the stride, conv2 is conv-norm, and the skip, when the block strides
//! or changes the width, is `AvgPool(stride)` (`.skip.0`) then a 1x1 conv without bias + norm
//! (`.skip.1`, or `.skip.0` when there is no stride). At initialisation conv2's norm is zeroed
//! (`weight_init.py::init_last_bn_before_add_to_0`), so every block starts as its skip.
use super::blocks::{ConvNormAct, ConvSpec};
use tch::nn::Path;
use tch::Tensor;

/// One BasicBlockD.
#[derive(Debug)]
pub(crate) struct BasicBlockD {
    conv1: ConvNormAct,
    conv2: ConvNormAct,
    /// The AvgPool kernel (= stride) of the skip, when the block strides.
    skip_pool: Option<[i64; 2]>,
    /// The 1x1 projection of the skip, when the width changes.
    skip_proj: Option<ConvNormAct>,
}

impl BasicBlockD {
    fn new(p: &Path, c_in: i64, c_out: i64, spec: ConvSpec, names: &mut Vec<String>) -> Self {
        let conv1 = ConvNormAct::new(&(p / "conv1"), c_in, c_out, spec, true, names);
        let conv2 = ConvNormAct::new(&(p / "conv2"), c_out, c_out, spec.strided([1, 1]), false, names);
        tch::no_grad(|| {
            let (w, b) = conv2.norm_params();
            let _ = w.shallow_clone().zero_();
            let _ = b.shallow_clone().zero_();
        });
        let strides = spec.stride != [1, 1];
        let skip_pool = strides.then_some(spec.stride);
        let skip_proj = (c_in != c_out).then(|| {
            let idx = if strides { 1 } else { 0 };
            let proj = ConvSpec { kernel: [1, 1], stride: [1, 1], bias: false, eps: spec.eps };
            ConvNormAct::new(&(p / "skip" / idx), c_in, c_out, proj, false, names)
        });
        BasicBlockD { conv1, conv2, skip_pool, skip_proj }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut residual = match self.skip_pool {
            // AvgPool2d(kernel=stride, stride=stride): no padding, floor, count_include_pad
            Some(k) => x.avg_pool2d(k, k, [0, 0], false, true, None::<i64>),
            None => x.shallow_clone(),
        };
        if let Some(proj) = &self.skip_proj {
            residual = proj.forward(&residual);
        }
        let out = self.conv2.forward(&self.conv1.forward(x)) + residual;
        out.leaky_relu()
    }
}

/// StackedResidualBlocks: `.blocks.{i}`; the first block carries the stride.
#[derive(Debug)]
pub(crate) struct ResidualStage {
    blocks: Vec<BasicBlockD>,
}

impl ResidualStage {
    pub fn new(p: &Path, n: usize, c_in: i64, c_out: i64, spec: ConvSpec, names: &mut Vec<String>) -> Self {
        let pb = p / "blocks";
        let blocks = (0..n)
            .map(|i| {
                let (ci, s) = if i == 0 { (c_in, spec) } else { (c_out, spec.strided([1, 1])) };
                BasicBlockD::new(&(&pb / i), ci, c_out, s, names)
            })
            .collect();
        ResidualStage { blocks }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = self.blocks[0].forward(x);
        for b in &self.blocks[1..] {
            y = b.forward(&y);
        }
        y
    }
}
