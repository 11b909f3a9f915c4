//! The 2D networks of nnU-Net v2, built from the plans' `arch_kwargs`: `PlainConvUNet` (the default
//! plans) and `ResidualEncoderUNet` (the Residual Encoder presets, `nnUNetResEncUNet{M,L,XL}Plans`).
//! Reference: dynamic-network-architectures `architectures/unet.py`, `building_blocks/plain_conv_encoder.py`,
//! `residual_encoders.py`, `unet_decoder.py`, `simple_conv_blocks.py`.
//!
//! PlainConvUNet's encoder has `n_stages` stages of `n_conv_per_stage[s]` blocks
//! conv(bias) -> InstanceNorm(affine, eps 1e-5, no running stats) -> LeakyReLU(0.01); the first conv of
//! a stage carries the stage stride (strided-conv downsampling, no pooling). ResidualEncoderUNet has a
//! stem (one such block) and `n_blocks_per_stage[s]` residual blocks per stage ([`residual`]). Both
//! share the decoder: a transposed conv (kernel = stride = the encoder stride), `[up, skip]`
//! concatenated, `n_conv_per_stage_decoder[s]` blocks and a 1x1 segmentation head per stage (deep
//! supervision).
//!
//! Parameter names are the reference's canonical `state_dict` keys (`encoder.stages.{s}.0.convs.{i}.conv.weight`,
//! `encoder.stages.{s}.blocks.{b}.conv1.conv.weight`, `decoder.transpconvs.{s}.weight`, ...), created
//! through `p / "encoder" / "stages" / ...` paths, so a checkpoint maps 1:1 onto the reference module
//! tree. [`UNet::named_parameters`] lists them in the reference's `named_parameters()` order.
mod blocks;
mod residual;

use blocks::{pair, Conv, ConvSpec, ConvTranspose, Stacked};
use nnunet_common::plans::ArchKwargs;
use residual::ResidualStage;
use tch::nn::Path;
use tch::Tensor;

/// `network_class_name` of the two architectures.
pub const PLAIN_CONV_UNET: &str = "dynamic_network_architectures.architectures.unet.PlainConvUNet";
pub const RESIDUAL_ENCODER_UNET: &str = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet";

/// Which architecture a plans file asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkClass {
    PlainConvUNet,
    ResidualEncoderUNet,
}

impl NetworkClass {
    /// The architecture of a plans `network_class_name` (the module path, or the bare class name);
    /// anything else is refused with a message that names it.
    pub fn from_class_name(name: &str) -> Result<NetworkClass, String> {
        match name.rsplit('.').next().unwrap_or(name) {
            "PlainConvUNet" => Ok(NetworkClass::PlainConvUNet),
            "ResidualEncoderUNet" => Ok(NetworkClass::ResidualEncoderUNet),
            _ => Err(format!(
                "network_class_name {name:?} is not supported: nnunet-rs runs {PLAIN_CONV_UNET} and {RESIDUAL_ENCODER_UNET} (2D)"
            )),
        }
    }

    /// The architecture `arch` describes: residual when it lists `n_blocks_per_stage`.
    pub fn of(arch: &ArchKwargs) -> NetworkClass {
        if arch.n_blocks_per_stage.is_empty() {
            NetworkClass::PlainConvUNet
        } else {
            NetworkClass::ResidualEncoderUNet
        }
    }
}

/// One encoder stage.
#[derive(Debug)]
enum EncoderStage {
    Plain(Stacked),
    Residual(ResidualStage),
}

impl EncoderStage {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            EncoderStage::Plain(s) => s.forward(x),
            EncoderStage::Residual(s) => s.forward(x),
        }
    }
}

/// A 2D nnU-Net U-Net (PlainConvUNet or ResidualEncoderUNet), with all deep-supervision heads built.
#[derive(Debug)]
pub struct UNet {
    class: NetworkClass,
    stem: Option<Stacked>,
    encoder: Vec<EncoderStage>,
    transpconvs: Vec<ConvTranspose>,
    decoder: Vec<Stacked>,
    seg_layers: Vec<Conv>,
    names: Vec<String>,
    /// Input channels and classes the network was built for, checked at `forward`.
    pub in_channels: i64,
    pub num_classes: i64,
}

/// The network type the trainer and inference use (historical name: it builds either architecture).
pub type PlainConvUNet = UNet;

impl UNet {
    /// Builds the network under `p` (use `vs.root()` so names are the reference's canonical keys):
    /// ResidualEncoderUNet when `arch` lists `n_blocks_per_stage`, else PlainConvUNet.
    /// Panics if `arch` is inconsistent (list lengths differ from `n_stages`); check plans with
    /// [`UNet::check_arch`] first when they come from a user.
    pub fn new(p: &Path, arch: &ArchKwargs, in_channels: i64, num_classes: i64) -> Self {
        if let Err(e) = Self::check_arch(arch) {
            panic!("{e}");
        }
        let class = NetworkClass::of(arch);
        let n = arch.n_stages;
        let eps = arch.norm_op_kwargs.get("eps").and_then(|v| v.as_f64()).unwrap_or(1e-5);
        let feats: Vec<i64> = arch.features_per_stage.iter().map(|&f| f as i64).collect();
        let spec = |s: usize| ConvSpec {
            kernel: pair(&arch.kernel_sizes[s], "kernel_sizes"),
            stride: pair(&arch.strides[s], "strides"),
            bias: arch.conv_bias,
            eps,
        };
        let mut names = Vec::new();
        let pe = p / "encoder";
        // ResidualEncoder: `encoder.stem.convs.0`, a stride-1 conv block to features[0].
        let stem = (class == NetworkClass::ResidualEncoderUNet)
            .then(|| Stacked::new(&(&pe / "stem"), 1, in_channels, feats[0], spec(0).strided([1, 1]), &mut names));
        let mut c_in = if stem.is_some() { feats[0] } else { in_channels };
        let mut encoder = Vec::with_capacity(n);
        for (s, &f) in feats.iter().enumerate() {
            let ps = &pe / "stages" / s;
            encoder.push(match class {
                // PlainConvEncoder: `encoder.stages.{s}.0` (a Sequential holding one StackedConvBlocks).
                NetworkClass::PlainConvUNet => {
                    EncoderStage::Plain(Stacked::new(&(&ps / 0), arch.n_conv_per_stage[s], c_in, f, spec(s), &mut names))
                }
                NetworkClass::ResidualEncoderUNet => {
                    EncoderStage::Residual(ResidualStage::new(&ps, arch.n_blocks_per_stage[s], c_in, f, spec(s), &mut names))
                }
            });
            c_in = f;
        }
        let (transpconvs, decoder, seg_layers) = Self::build_decoder(&(p / "decoder"), arch, &feats, num_classes, &spec, &mut names);
        UNet { class, stem, encoder, transpconvs, decoder, seg_layers, names, in_channels, num_classes }
    }

    /// The decoder (`UNetDecoder`): stage s (0 = lowest resolution) upsamples F[n-1-s] -> F[n-2-s]
    /// with the stride of encoder stage n-1-s. The reference registers stages, then transpconvs,
    /// then seg_layers, so named_parameters() lists them in that order.
    fn build_decoder(
        pd: &Path,
        arch: &ArchKwargs,
        feats: &[i64],
        num_classes: i64,
        spec: &dyn Fn(usize) -> ConvSpec,
        names: &mut Vec<String>,
    ) -> (Vec<ConvTranspose>, Vec<Stacked>, Vec<Conv>) {
        let n = arch.n_stages;
        let (mut n_stages, mut n_tr, mut n_seg) = (Vec::new(), Vec::new(), Vec::new());
        let (mut transpconvs, mut decoder, mut seg_layers) = (Vec::new(), Vec::new(), Vec::new());
        for s in 1..n {
            let (below, skip) = (feats[n - s], feats[n - s - 1]);
            let up = spec(n - s);
            transpconvs.push(ConvTranspose::new(&(pd / "transpconvs" / (s - 1)), below, skip, up.stride, up.bias, &mut n_tr));
            let conv = spec(n - s - 1).strided([1, 1]);
            decoder.push(Stacked::new(
                &(pd / "stages" / (s - 1)),
                arch.n_conv_per_stage_decoder[s - 1],
                2 * skip,
                skip,
                conv,
                &mut n_stages,
            ));
            // Seg heads always have a bias (dna: `unet_decoder.py`, `bias=True`).
            let head = ConvSpec { kernel: [1, 1], stride: [1, 1], bias: true, eps: conv.eps };
            seg_layers.push(Conv::new(&(pd / "seg_layers" / (s - 1)), skip, num_classes, head, &mut n_seg));
        }
        names.extend(n_stages);
        names.extend(n_tr);
        names.extend(n_seg);
        (transpconvs, decoder, seg_layers)
    }

    /// The architecture this network is.
    pub fn class(&self) -> NetworkClass {
        self.class
    }

    /// Checks that `arch` describes a 2D PlainConvUNet or ResidualEncoderUNet this implementation can build.
    pub fn check_arch(arch: &ArchKwargs) -> Result<(), String> {
        let n = arch.n_stages;
        let bad = |what: &str, len: usize, want: usize| format!("plans arch_kwargs: {what} has {len} entries, n_stages={n} needs {want}");
        if n < 2 {
            return Err(format!("plans arch_kwargs: n_stages={n}; a U-Net needs at least 2 stages"));
        }
        let per_stage = match NetworkClass::of(arch) {
            NetworkClass::PlainConvUNet => ("n_conv_per_stage", &arch.n_conv_per_stage),
            NetworkClass::ResidualEncoderUNet => ("n_blocks_per_stage", &arch.n_blocks_per_stage),
        };
        for (what, len) in [
            ("features_per_stage", arch.features_per_stage.len()),
            ("kernel_sizes", arch.kernel_sizes.len()),
            ("strides", arch.strides.len()),
            (per_stage.0, per_stage.1.len()),
        ] {
            if len != n {
                return Err(bad(what, len, n));
            }
        }
        if arch.n_conv_per_stage_decoder.len() != n - 1 {
            return Err(bad("n_conv_per_stage_decoder", arch.n_conv_per_stage_decoder.len(), n - 1));
        }
        for k in arch.kernel_sizes.iter().chain(arch.strides.iter()) {
            if k.is_empty() || k.len() > 2 {
                return Err(format!("plans arch_kwargs: kernel/stride entry {k:?} is not 2D"));
            }
        }
        if per_stage.1.iter().chain(arch.n_conv_per_stage_decoder.iter()).any(|&c| c == 0) {
            return Err("plans arch_kwargs: every stage needs at least one conv or block".into());
        }
        Ok(())
    }

    fn encode(&self, x: &Tensor) -> Vec<Tensor> {
        assert_eq!(x.dim(), 4, "the U-Net expects (B, C, H, W), got {:?}", x.size());
        assert_eq!(x.size()[1], self.in_channels, "the U-Net was built for {} input channels, got input {:?}", self.in_channels, x.size());
        let mut skips = Vec::with_capacity(self.encoder.len());
        let stemmed = self.stem.as_ref().map(|s| s.forward(x));
        let mut y = self.encoder[0].forward(stemmed.as_ref().unwrap_or(x));
        for st in &self.encoder[1..] {
            let next = st.forward(&y);
            skips.push(y);
            y = next;
        }
        skips.push(y);
        skips
    }

    /// Runs the decoder; with `all_heads` every stage's seg head is evaluated, else only the last.
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
        let fixture = include_str!("../../../tests/fixtures/train/plainconvunet_512_8stage_c3_k2_names.txt");
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

    /// Loads a reference fixture (`param/<name>`, `input`, `out<i>`) into a network built from `a`
    /// and checks its deep-supervision outputs against the reference's within 1e-4.
    fn check_forward_against_fixture(npz: &[u8], a: &ArchKwargs, in_channels: i64, classes: i64) {
        let dir = tempfile::tempdir().unwrap();
        let fx = dir.path().join("fx.npz");
        std::fs::write(&fx, npz).unwrap();
        let load = |key: &str| {
            let (shape, data) = nnunet_common::npy::read_npz_member::<f32>(&fx, key).unwrap();
            Tensor::from_slice(&data).reshape(shape.iter().map(|&s| s as i64).collect::<Vec<_>>())
        };
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = UNet::new(&vs.root(), a, in_channels, classes);
        tch::no_grad(|| {
            for (name, mut t) in net.named_parameters(&vs) {
                t.copy_(&load(&format!("param/{name}")));
            }
        });
        let outs = tch::no_grad(|| net.forward_ds(&load("input")));
        assert_eq!(outs.len(), a.n_stages - 1);
        for (i, o) in outs.iter().enumerate() {
            let r = load(&format!("out{i}"));
            assert_eq!(o.size(), r.size());
            let diff = (o - &r).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "output {i} differs from the reference by {diff}");
        }
    }

    #[test]
    fn forward_matches_the_reference_on_a_tiny_net() {
        // Fixture made by tests/fixtures/train/make_forward_fixture.py with the reference PlainConvUNet.
        let mut a = arch(3, 4);
        a.features_per_stage = vec![4, 8, 16];
        check_forward_against_fixture(include_bytes!("../../../tests/fixtures/train/plainconvunet_tiny_forward.npz"), &a, 2, 3);
    }

    fn resenc_arch_from_plans(file: &str) -> ArchKwargs {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/planning").join(file);
        nnunet_common::plans::Plans::load(&p).unwrap().config_2d().unwrap().architecture.arch_kwargs
    }

    #[test]
    fn resenc_names_shapes_and_count_match_the_reference() {
        // Fixture: tests/fixtures/train/resenc_isbi_m_c1_k2_names.txt (make_resenc_fixtures.py), the
        // reference ResidualEncoderUNet of the ISBI ResEnc M plans, 1 channel, 2 classes.
        let fixture = include_str!("../../../tests/fixtures/train/resenc_isbi_m_c1_k2_names.txt");
        let arch = resenc_arch_from_plans("isbi/nnUNetResEncUNetMPlans.json");
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = UNet::new(&vs.root(), &arch, 1, 2);
        assert_eq!(net.class(), NetworkClass::ResidualEncoderUNet);
        let ours: Vec<String> = net.named_parameters(&vs).iter().map(|(n, t)| format!("{n} {:?}", t.size())).collect();
        let reference: Vec<&str> = fixture.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(ours.len(), reference.len());
        for (a, b) in ours.iter().zip(&reference) {
            assert_eq!(a, b);
        }
        let count: i64 = fixture.lines().last().unwrap().trim_start_matches("# parameters ").parse().unwrap();
        assert_eq!(net.num_parameters(&vs), count);
        assert_eq!(vs.len(), reference.len(), "no parameter outside the reference list");
        // init_last_bn_before_add_to_0: every block's conv2 norm starts at zero
        let vars = vs.variables();
        assert_eq!(vars["encoder.stages.3.blocks.5.conv2.norm.weight"].abs().sum(tch::Kind::Float).double_value(&[]), 0.0);
        assert_eq!(vars["encoder.stages.3.blocks.5.conv1.norm.weight"].mean(tch::Kind::Float).double_value(&[]), 1.0);
    }

    #[test]
    fn resenc_forward_matches_the_reference_on_a_tiny_net() {
        // Fixture made by tests/fixtures/train/make_resenc_fixtures.py with the reference ResidualEncoderUNet.
        let mut a = arch(3, 4);
        a.features_per_stage = vec![4, 8, 16];
        a.n_conv_per_stage = vec![];
        a.n_blocks_per_stage = vec![1, 2, 2];
        a.n_conv_per_stage_decoder = vec![1, 1];
        check_forward_against_fixture(include_bytes!("../../../tests/fixtures/train/resenc_tiny_forward.npz"), &a, 2, 3);
    }

    #[test]
    fn unknown_network_class_is_named() {
        let e = NetworkClass::from_class_name("dynamic_network_architectures.architectures.unet.PrimusM").unwrap_err();
        assert!(e.contains("PrimusM") && e.contains("ResidualEncoderUNet"), "{e}");
        assert_eq!(NetworkClass::from_class_name(RESIDUAL_ENCODER_UNET).unwrap(), NetworkClass::ResidualEncoderUNet);
    }
}
