//! PlainConvUNet, the 2D network of nnU-Net v2, built from the plans' `arch_kwargs` (`nnunetv2/utilities/get_network_from_plans.py`;
//! dynamic-network-architectures `architectures/unet.py`, `building_blocks/plain_conv_encoder.py`,
//! `unet_decoder.py`, `simple_conv_blocks.py`).
//!
//! Layout: the encoder has `n_stages` stages of `n_conv_per_stage[s]` blocks
//! conv(bias) -> InstanceNorm(affine, eps 1e-5, no running stats) -> LeakyReLU(0.01); the first conv of
//! a stage carries the stage stride (strided-conv downsampling, no pooling). The decoder upsamples with
//! a transposed conv (kernel = stride = the encoder stride), concatenates `[up, skip]`, runs
//! `n_conv_per_stage_decoder[s]` blocks and has a 1x1 segmentation head per stage (deep supervision).
//!
//! Parameter names are the reference's canonical `state_dict` keys (`encoder.stages.{s}.0.convs.{i}.conv.weight`,
//! `decoder.transpconvs.{s}.weight`, ...), created through `p / "encoder" / "stages" / ...` paths, so
//! a checkpoint maps 1:1 onto the reference module tree. [`PlainConvUNet::named_parameters`] lists them
//! in the reference's `named_parameters()` order.
use nnunet_common::plans::ArchKwargs;
use tch::nn::{Init, Path};
use tch::Tensor;

/// LeakyReLU negative slope used by nnU-Net (`nonlin_kwargs` carries only `inplace`; torch's default
/// slope is 0.01), and the `a` of `InitWeights_He(1e-2)`.
const NEG_SLOPE: f64 = 1e-2;

/// `kaiming_normal_(w, a=0.01)`: fan_in mode, leaky_relu gain `sqrt(2/(1+a^2))`. tch's `FanIn` is
/// `dims[1] * prod(dims[2..])`, which is exactly torch's `_calculate_fan_in_and_fan_out` also for a
/// ConvTranspose weight `(in, out, k, k)` (fan_in = out*k*k there; `nnunetv2/utilities/network_initialization.py::InitWeights_He`).
fn he_init() -> Init {
    Init::Kaiming {
        dist: tch::nn::init::NormalOrUniform::Normal,
        fan: tch::nn::init::FanInOut::FanIn,
        non_linearity: tch::nn::init::NonLinearity::ExplicitGain((2.0 / (1.0 + NEG_SLOPE * NEG_SLOPE)).sqrt()),
    }
}

/// One convolution (also used for the 1x1 heads). Weight (out, in, kh, kw).
#[derive(Debug)]
struct Conv {
    w: Tensor,
    b: Option<Tensor>,
    stride: [i64; 2],
    padding: [i64; 2],
}

impl Conv {
    fn new(p: &Path, c_in: i64, c_out: i64, kernel: [i64; 2], stride: [i64; 2], bias: bool, names: &mut Vec<String>) -> Self {
        let w = p.var("weight", &[c_out, c_in, kernel[0], kernel[1]], he_init());
        names.push(p.path("weight"));
        let b = bias.then(|| {
            names.push(p.path("bias"));
            p.var("bias", &[c_out], Init::Const(0.0))
        });
        Conv { w, b, stride, padding: [(kernel[0] - 1) / 2, (kernel[1] - 1) / 2] }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.w, self.b.as_ref(), self.stride, self.padding, [1, 1], 1)
    }
}

/// The shape of a conv-norm-act block: channels in and out, kernel, stride, conv bias, norm eps.
#[derive(Debug, Clone, Copy)]
struct ConvSpec {
    c_in: i64,
    c_out: i64,
    kernel: [i64; 2],
    stride: [i64; 2],
    bias: bool,
    eps: f64,
}

/// ConvDropoutNormReLU without dropout: `.conv`, `.norm`, then LeakyReLU.
#[derive(Debug)]
struct ConvNormAct {
    conv: Conv,
    norm_w: Tensor,
    norm_b: Tensor,
    eps: f64,
}

impl ConvNormAct {
    fn new(p: &Path, c: ConvSpec, names: &mut Vec<String>) -> Self {
        let ConvSpec { c_in, c_out, kernel, stride, bias, eps } = c;
        let conv = Conv::new(&(p / "conv"), c_in, c_out, kernel, stride, bias, names);
        let pn = p / "norm";
        let norm_w = pn.var("weight", &[c_out], Init::Const(1.0));
        names.push(pn.path("weight"));
        let norm_b = pn.var("bias", &[c_out], Init::Const(0.0));
        names.push(pn.path("bias"));
        ConvNormAct { conv, norm_w, norm_b, eps }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.conv.forward(x);
        // InstanceNorm2d(affine=True, track_running_stats=False): always uses the input statistics.
        let mut y = y.instance_norm(Some(&self.norm_w), Some(&self.norm_b), None::<&Tensor>, None::<&Tensor>, true, 0.1, self.eps, true);
        // torch.nn.LeakyReLU default negative_slope = 0.01; in-place like the reference (inplace=True).
        let _ = y.leaky_relu_();
        y
    }
}

/// StackedConvBlocks: `.convs.{i}`; the first block carries the stride.
#[derive(Debug)]
struct Stacked {
    blocks: Vec<ConvNormAct>,
}

impl Stacked {
    /// `n` blocks of shape `c` (the first with `c`'s input channels and stride, the rest `c_out` -> `c_out`, stride 1).
    fn new(p: &Path, n: usize, c: ConvSpec, names: &mut Vec<String>) -> Self {
        let pc = p / "convs";
        let blocks = (0..n)
            .map(|i| {
                let ci = if i == 0 { c } else { ConvSpec { c_in: c.c_out, stride: [1, 1], ..c } };
                ConvNormAct::new(&(&pc / i), ci, names)
            })
            .collect();
        Stacked { blocks }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = self.blocks[0].forward(x);
        for b in &self.blocks[1..] {
            y = b.forward(&y);
        }
        y
    }
}

/// A transposed conv, weight (in, out, s, s), kernel = stride.
#[derive(Debug)]
struct ConvTranspose {
    w: Tensor,
    b: Option<Tensor>,
    stride: [i64; 2],
}

impl ConvTranspose {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv_transpose2d(&self.w, self.b.as_ref(), self.stride, [0, 0], [0, 0], 1, [1, 1])
    }
}

/// The reference `PlainConvUNet` (2D, `conv_op = Conv2d`), with all deep-supervision heads built.
#[derive(Debug)]
pub struct PlainConvUNet {
    encoder: Vec<Stacked>,
    transpconvs: Vec<ConvTranspose>,
    decoder: Vec<Stacked>,
    seg_layers: Vec<Conv>,
    names: Vec<String>,
    /// Input channels and classes the network was built for, checked at `forward`.
    pub in_channels: i64,
    pub num_classes: i64,
}

fn pair(v: &[usize], what: &str) -> [i64; 2] {
    match v {
        [a, b] => [*a as i64, *b as i64],
        [a] => [*a as i64, *a as i64],
        _ => panic!("{what} must have 2 entries for a 2D network, got {v:?}"),
    }
}

impl PlainConvUNet {
    /// Builds the network under `p` (use `vs.root()` so names are the reference's canonical keys).
    /// Panics if `arch` is inconsistent (list lengths differ from `n_stages`); check plans with
    /// [`PlainConvUNet::check_arch`] first when they come from a user.
    pub fn new(p: &Path, arch: &ArchKwargs, in_channels: i64, num_classes: i64) -> Self {
        if let Err(e) = Self::check_arch(arch) {
            panic!("{e}");
        }
        let n = arch.n_stages;
        let eps = arch.norm_op_kwargs.get("eps").and_then(|v| v.as_f64()).unwrap_or(1e-5);
        let feats: Vec<i64> = arch.features_per_stage.iter().map(|&f| f as i64).collect();
        let kernels: Vec<[i64; 2]> = arch.kernel_sizes.iter().map(|k| pair(k, "kernel_sizes")).collect();
        let strides: Vec<[i64; 2]> = arch.strides.iter().map(|s| pair(s, "strides")).collect();
        let bias = arch.conv_bias;
        let mut names = Vec::new();

        // Encoder: `encoder.stages.{s}.0` (a Sequential holding one StackedConvBlocks).
        let pe = p / "encoder" / "stages";
        let mut encoder = Vec::with_capacity(n);
        let mut c_in = in_channels;
        for s in 0..n {
            let c = ConvSpec { c_in, c_out: feats[s], kernel: kernels[s], stride: strides[s], bias, eps };
            encoder.push(Stacked::new(&(&pe / s / 0), arch.n_conv_per_stage[s], c, &mut names));
            c_in = feats[s];
        }

        // Decoder: stage s (0 = lowest resolution) upsamples F[n-1-s] -> F[n-2-s] with the stride of
        // encoder stage n-1-s. The reference registers stages, then transpconvs, then seg_layers, so
        // named_parameters() lists them in that order; keep separate name lists and append in order.
        let pd = p / "decoder";
        let (mut n_stages, mut n_tr, mut n_seg) = (Vec::new(), Vec::new(), Vec::new());
        let mut decoder = Vec::with_capacity(n - 1);
        let mut transpconvs = Vec::with_capacity(n - 1);
        let mut seg_layers = Vec::with_capacity(n - 1);
        for s in 1..n {
            let below = feats[n - s];
            let skip = feats[n - s - 1];
            let stride = strides[n - s];
            let pt = &pd / "transpconvs" / (s - 1);
            let w = pt.var("weight", &[below, skip, stride[0], stride[1]], he_init());
            n_tr.push(pt.path("weight"));
            let b = bias.then(|| {
                n_tr.push(pt.path("bias"));
                pt.var("bias", &[skip], Init::Const(0.0))
            });
            transpconvs.push(ConvTranspose { w, b, stride });
            let c = ConvSpec { c_in: 2 * skip, c_out: skip, kernel: kernels[n - s - 1], stride: [1, 1], bias, eps };
            decoder.push(Stacked::new(&(&pd / "stages" / (s - 1)), arch.n_conv_per_stage_decoder[s - 1], c, &mut n_stages));
            // Seg heads always have a bias (dna: `unet_decoder.py`, `bias=True`).
            seg_layers.push(Conv::new(&(&pd / "seg_layers" / (s - 1)), skip, num_classes, [1, 1], [1, 1], true, &mut n_seg));
        }
        names.extend(n_stages);
        names.extend(n_tr);
        names.extend(n_seg);
        PlainConvUNet { encoder, transpconvs, decoder, seg_layers, names, in_channels, num_classes }
    }

    /// Checks that `arch` describes a 2D PlainConvUNet this implementation can build.
    pub fn check_arch(arch: &ArchKwargs) -> Result<(), String> {
        let n = arch.n_stages;
        let bad = |what: &str, len: usize, want: usize| format!("plans arch_kwargs: {what} has {len} entries, n_stages={n} needs {want}");
        if n < 2 {
            return Err(format!("plans arch_kwargs: n_stages={n}; a U-Net needs at least 2 stages"));
        }
        if arch.features_per_stage.len() != n {
            return Err(bad("features_per_stage", arch.features_per_stage.len(), n));
        }
        if arch.kernel_sizes.len() != n {
            return Err(bad("kernel_sizes", arch.kernel_sizes.len(), n));
        }
        if arch.strides.len() != n {
            return Err(bad("strides", arch.strides.len(), n));
        }
        if arch.n_conv_per_stage.len() != n {
            return Err(bad("n_conv_per_stage", arch.n_conv_per_stage.len(), n));
        }
        if arch.n_conv_per_stage_decoder.len() != n - 1 {
            return Err(bad("n_conv_per_stage_decoder", arch.n_conv_per_stage_decoder.len(), n - 1));
        }
        for k in arch.kernel_sizes.iter().chain(arch.strides.iter()) {
            if k.is_empty() || k.len() > 2 {
                return Err(format!("plans arch_kwargs: kernel/stride entry {k:?} is not 2D"));
            }
        }
        if arch.n_conv_per_stage.iter().chain(arch.n_conv_per_stage_decoder.iter()).any(|&c| c == 0) {
            return Err("plans arch_kwargs: every stage needs at least one conv".into());
        }
        Ok(())
    }

    fn encode(&self, x: &Tensor) -> Vec<Tensor> {
        assert_eq!(x.dim(), 4, "PlainConvUNet expects (B, C, H, W), got {:?}", x.size());
        assert_eq!(x.size()[1], self.in_channels, "PlainConvUNet built for {} input channels, got input {:?}", self.in_channels, x.size());
        let mut skips = Vec::with_capacity(self.encoder.len());
        let mut y = self.encoder[0].forward(x);
        for st in &self.encoder[1..] {
            let next = st.forward(&y);
            skips.push(y);
            y = next;
        }
        skips.push(y);
        skips
    }

    /// Runs the decoder; `heads(s)` says whether stage s's seg head is evaluated.
    fn decode(&self, skips: &[Tensor], all_heads: bool) -> Vec<Tensor> {
        let n = skips.len();
        let mut outs = Vec::new();
        let mut lres = skips[n - 1].shallow_clone();
        for s in 0..self.decoder.len() {
            let up = self.transpconvs[s].forward(&lres);
            let x = Tensor::cat(&[&up, &skips[n - s - 2]], 1);
            let x = self.decoder[s].forward(&x);
            if all_heads || s == self.decoder.len() - 1 {
                outs.push(self.seg_layers[s].forward(&x));
            }
            lres = x;
        }
        outs.reverse();
        outs
    }

    /// Deep-supervision outputs, highest resolution first (`n_stages - 1` logit maps).
    pub fn forward_ds(&self, x: &Tensor) -> Vec<Tensor> {
        let skips = self.encode(x);
        self.decode(&skips, true)
    }

    /// Full-resolution logits only (deep supervision off: only the last head runs).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let skips = self.encode(x);
        self.decode(&skips, false).pop().expect("decoder has at least one stage")
    }

    /// Parameter names in the reference `named_parameters()` order.
    pub fn parameter_names(&self) -> &[String] {
        &self.names
    }

    /// (name, tensor) pairs in the reference order; the tensors share storage with the VarStore.
    pub fn named_parameters(&self, vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
        let vars = vs.variables();
        self.names
            .iter()
            .map(|n| (n.clone(), vars.get(n).unwrap_or_else(|| panic!("parameter {n} missing from the VarStore")).shallow_clone()))
            .collect()
    }

    /// Total number of parameters.
    pub fn num_parameters(&self, vs: &tch::nn::VarStore) -> i64 {
        self.named_parameters(vs).iter().map(|(_, t)| t.numel() as i64).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The arch_kwargs nnU-Net's `ExperimentPlanner` plans for a 512x512 2D dataset (`common/src/planning.rs` tests).
    pub fn arch(n_stages: usize, base: usize) -> ArchKwargs {
        crate::train::synth::arch_kwargs_with_base(n_stages, base)
    }

    #[test]
    fn names_shapes_and_count_match_the_reference() {
        // Fixture: `tests/fixtures/train/plainconvunet_512_8stage_c3_k2_names.txt`, dumped from
        // dynamic_network_architectures' PlainConvUNet (see the README there).
        let fixture = include_str!("../../tests/fixtures/train/plainconvunet_512_8stage_c3_k2_names.txt");
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = PlainConvUNet::new(&vs.root(), &arch(8, 32), 3, 2);
        let ours: Vec<String> = net.named_parameters(&vs).iter().map(|(n, t)| format!("{n} {:?}", t.size())).collect();
        let reference: Vec<String> = fixture.lines().map(|l| l.to_string()).collect();
        assert_eq!(ours.len(), reference.len());
        for (a, b) in ours.iter().zip(&reference) {
            assert_eq!(a, b);
        }
        assert_eq!(net.num_parameters(&vs), 46_325_134);
        assert_eq!(vs.len(), reference.len(), "no parameter outside the reference list");
    }

    #[test]
    fn forward_shapes_and_ds_outputs() {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = PlainConvUNet::new(&vs.root(), &arch(4, 4), 2, 3);
        let x = Tensor::randn([2, 2, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
        let outs = net.forward_ds(&x);
        let sizes: Vec<Vec<i64>> = outs.iter().map(|t| t.size()).collect();
        assert_eq!(sizes, vec![vec![2, 3, 32, 32], vec![2, 3, 16, 16], vec![2, 3, 8, 8]]);
        let full = net.forward(&x);
        assert_eq!(full.size(), vec![2, 3, 32, 32]);
        let diff = (&full - &outs[0]).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "forward and forward_ds[0] differ by {diff}");
    }

    #[test]
    fn he_init_statistics() {
        // kaiming_normal_(a=0.01): std = sqrt(2/(1+1e-4)) / sqrt(fan_in); ConvTranspose fan_in = out*k*k.
        tch::manual_seed(0);
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let _net = PlainConvUNet::new(&vs.root(), &arch(8, 32), 3, 2);
        let vars = vs.variables();
        let gain = (2.0f64 / 1.0001).sqrt();
        let w = &vars["encoder.stages.5.0.convs.1.conv.weight"]; // (512, 512, 3, 3)
        let std = w.std(true).double_value(&[]);
        assert!((std - gain / (512.0f64 * 9.0).sqrt()).abs() < 0.02 * std, "conv std {std}");
        let t = &vars["decoder.transpconvs.6.weight"]; // (64, 32, 2, 2): fan_in = 32*4
        let std = t.std(true).double_value(&[]);
        assert!((std - gain / (32.0f64 * 4.0).sqrt()).abs() < 0.05 * std, "transpconv std {std}");
        assert_eq!(vars["decoder.seg_layers.0.bias"].abs().sum(tch::Kind::Float).double_value(&[]), 0.0);
        assert_eq!(vars["encoder.stages.0.0.convs.0.norm.weight"].mean(tch::Kind::Float).double_value(&[]), 1.0);
    }

    #[test]
    fn forward_matches_the_reference_on_a_tiny_net() {
        // Fixture made by tests/fixtures/train/make_forward_fixture.py with the reference PlainConvUNet.
        let dir = tempfile::tempdir().unwrap();
        let fx = dir.path().join("fx.npz");
        std::fs::write(&fx, include_bytes!("../../tests/fixtures/train/plainconvunet_tiny_forward.npz")).unwrap();
        let load = |key: &str| {
            let (shape, data) = nnunet_common::npy::read_npz_member::<f32>(&fx, key).unwrap();
            Tensor::from_slice(&data).reshape(shape.iter().map(|&s| s as i64).collect::<Vec<_>>())
        };
        let mut a = arch(3, 4);
        a.features_per_stage = vec![4, 8, 16];
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = PlainConvUNet::new(&vs.root(), &a, 2, 3);
        tch::no_grad(|| {
            for (name, mut t) in net.named_parameters(&vs) {
                t.copy_(&load(&format!("param/{name}")));
            }
        });
        let outs = tch::no_grad(|| net.forward_ds(&load("input")));
        assert_eq!(outs.len(), 2);
        for (i, o) in outs.iter().enumerate() {
            let r = load(&format!("out{i}"));
            assert_eq!(o.size(), r.size());
            let diff = (o - &r).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "output {i} differs from the reference by {diff}");
        }
    }
}
