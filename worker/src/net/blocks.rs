//! Building blocks shared by PlainConvUNet and ResidualEncoderUNet (dynamic-network-architectures
//! `building_blocks/simple_conv_blocks.py`): a convolution, ConvDropoutNormReLU without dropout,
//! StackedConvBlocks and the decoder's transposed convolution. Parameter paths follow the reference
//! module tree (`.conv`, `.norm`, `.convs.{i}`).
use tch::nn::{Init, Path};
use tch::Tensor;

/// LeakyReLU negative slope used by nnU-Net (`nonlin_kwargs` carries only `inplace`; torch's default
/// slope is 0.01), and the `a` of `InitWeights_He(1e-2)`.
pub(crate) const NEG_SLOPE: f64 = 1e-2;

/// `kaiming_normal_(w, a=0.01)`: fan_in mode, leaky_relu gain `sqrt(2/(1+a^2))`. tch's `FanIn` is
/// `dims[1] * prod(dims[2..])`, which is exactly torch's `_calculate_fan_in_and_fan_out` also for a
/// ConvTranspose weight `(in, out, k, k)` (fan_in = out*k*k there;
/// dynamic_network_architectures/initialization/weight_init.py::InitWeights_He).
pub(crate) fn he_init() -> Init {
    Init::Kaiming {
        dist: tch::nn::init::NormalOrUniform::Normal,
        fan: tch::nn::init::FanInOut::FanIn,
        non_linearity: tch::nn::init::NonLinearity::ExplicitGain((2.0 / (1.0 + NEG_SLOPE * NEG_SLOPE)).sqrt()),
    }
}

/// The shape of one convolution: kernel, stride, bias, and the norm's eps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub kernel: [i64; 2],
    pub stride: [i64; 2],
    pub bias: bool,
    pub eps: f64,
}

impl ConvSpec {
    /// The same convolution with another stride.
    pub fn strided(self, stride: [i64; 2]) -> ConvSpec {
        ConvSpec { stride, ..self }
    }
}

/// One convolution (also used for the 1x1 heads). Weight (out, in, kh, kw).
#[derive(Debug)]
pub(crate) struct Conv {
    w: Tensor,
    b: Option<Tensor>,
    stride: [i64; 2],
    padding: [i64; 2],
}

impl Conv {
    pub fn new(p: &Path, c_in: i64, c_out: i64, spec: ConvSpec, names: &mut Vec<String>) -> Self {
        let k = spec.kernel;
        let w = p.var("weight", &[c_out, c_in, k[0], k[1]], he_init());
        names.push(p.path("weight"));
        let b = spec.bias.then(|| {
            names.push(p.path("bias"));
            p.var("bias", &[c_out], Init::Const(0.0))
        });
        Conv { w, b, stride: spec.stride, padding: [(k[0] - 1) / 2, (k[1] - 1) / 2] }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.w, self.b.as_ref(), self.stride, self.padding, [1, 1], 1)
    }
}

/// ConvDropoutNormReLU without dropout: `.conv`, `.norm`, then LeakyReLU when `act`.
#[derive(Debug)]
pub(crate) struct ConvNormAct {
    conv: Conv,
    norm_w: Tensor,
    norm_b: Tensor,
    eps: f64,
    act: bool,
}

impl ConvNormAct {
    pub fn new(p: &Path, c_in: i64, c_out: i64, spec: ConvSpec, act: bool, names: &mut Vec<String>) -> Self {
        let conv = Conv::new(&(p / "conv"), c_in, c_out, spec, names);
        let pn = p / "norm";
        let norm_w = pn.var("weight", &[c_out], Init::Const(1.0));
        names.push(pn.path("weight"));
        let norm_b = pn.var("bias", &[c_out], Init::Const(0.0));
        names.push(pn.path("bias"));
        ConvNormAct { conv, norm_w, norm_b, eps: spec.eps, act }
    }

    /// The norm's affine parameters (weight, bias).
    pub fn norm_params(&self) -> (&Tensor, &Tensor) {
        (&self.norm_w, &self.norm_b)
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.conv.forward(x);
        // InstanceNorm2d(affine=True, track_running_stats=False): always uses the input statistics.
        let mut y = y.instance_norm(Some(&self.norm_w), Some(&self.norm_b), None::<&Tensor>, None::<&Tensor>, true, 0.1, self.eps, true);
        if self.act {
            // torch.nn.LeakyReLU default negative_slope = 0.01; in place like the reference (inplace=True).
            y = y.leaky_relu_();
        }
        y
    }
}

/// StackedConvBlocks: `.convs.{i}`; the first block carries the stride.
#[derive(Debug)]
pub(crate) struct Stacked {
    blocks: Vec<ConvNormAct>,
}

impl Stacked {
    pub fn new(p: &Path, n: usize, c_in: i64, c_out: i64, spec: ConvSpec, names: &mut Vec<String>) -> Self {
        let pc = p / "convs";
        let blocks = (0..n)
            .map(|i| {
                let (ci, s) = if i == 0 { (c_in, spec) } else { (c_out, spec.strided([1, 1])) };
                ConvNormAct::new(&(&pc / i), ci, c_out, s, true, names)
            })
            .collect();
        Stacked { blocks }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = self.blocks[0].forward(x);
        for b in &self.blocks[1..] {
            y = b.forward(&y);
        }
        y
    }
}

/// A transposed conv, weight (in, out, s, s), kernel = stride.
#[derive(Debug)]
pub(crate) struct ConvTranspose {
    w: Tensor,
    b: Option<Tensor>,
    stride: [i64; 2],
}

impl ConvTranspose {
    pub fn new(p: &Path, c_in: i64, c_out: i64, stride: [i64; 2], bias: bool, names: &mut Vec<String>) -> Self {
        let w = p.var("weight", &[c_in, c_out, stride[0], stride[1]], he_init());
        names.push(p.path("weight"));
        let b = bias.then(|| {
            names.push(p.path("bias"));
            p.var("bias", &[c_out], Init::Const(0.0))
        });
        ConvTranspose { w, b, stride }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv_transpose2d(&self.w, self.b.as_ref(), self.stride, [0, 0], [0, 0], 1, [1, 1])
    }
}

/// A 2D kernel or stride from the plans (`[a, b]`, or `[a]` for both axes).
pub(crate) fn pair(v: &[usize], what: &str) -> [i64; 2] {
    match v {
        [a, b] => [*a as i64, *b as i64],
        [a] => [*a as i64, *a as i64],
        _ => panic!("{what} must have 2 entries for a 2D network, got {v:?}"),
    }
}
