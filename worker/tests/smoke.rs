//! A real libtorch forward/backward/SGD step on CPU, and a report of CUDA availability.
use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};

#[test]
fn libtorch_forward_backward_sgd_step() {
    println!("tch::Cuda::is_available() = {}", tch::Cuda::is_available());
    println!("tch::Cuda::device_count() = {}", tch::Cuda::device_count());
    let vs = nn::VarStore::new(Device::Cpu);
    let net = nn::seq()
        .add(nn::conv2d(vs.root() / "c1", 1, 4, 3, nn::ConvConfig { padding: 1, ..Default::default() }))
        .add_fn(|x| x.leaky_relu())
        .add(nn::conv2d(vs.root() / "c2", 4, 2, 1, Default::default()));
    let mut opt = nn::Sgd { momentum: 0.9, nesterov: true, ..Default::default() }.build(&vs, 0.01).unwrap();
    let x = Tensor::randn([2, 1, 16, 16], (Kind::Float, Device::Cpu));
    let y = x.gt(0.0).to_kind(Kind::Int64).squeeze_dim(1);
    let mut losses = Vec::new();
    for _ in 0..5 {
        let loss = net.forward(&x).cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0);
        opt.backward_step(&loss);
        losses.push(f64::try_from(&loss).unwrap());
    }
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[4] < losses[0], "five SGD steps must reduce the loss: {losses:?}");
}
