//! SGD with Nesterov momentum and L2 weight decay, with torch's exact semantics
//! (`torch/optim/sgd.py::_single_tensor_sgd`, dampening 0), and total-L2-norm gradient clipping
//! (`torch.nn.utils.clip_grad_norm_`). `nnUNetTrainer.configure_optimizers`: lr 1e-2, momentum 0.99, nesterov, weight decay 3e-5,
//! clip 12.
//!
//! Why our own optimizer: tch's `COptimizer` cannot export its momentum buffers, and an exact resume
//! needs them (nnU-Net saves `optimizer.state_dict()` in every checkpoint). The buffers are saved as
//! `optimizer.momentum.<param name>` in the checkpoint's safetensors file.
use tch::{Kind, Tensor};

/// SGD state: one momentum buffer per parameter, created on the first step like torch's.
pub struct Sgd {
    /// (name, parameter) in the network's canonical order.
    params: Vec<(String, Tensor)>,
    /// Momentum buffers; `None` until the first step that saw a gradient for the parameter.
    buffers: Vec<Option<Tensor>>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl Sgd {
    pub fn new(params: Vec<(String, Tensor)>, momentum: f64, weight_decay: f64, nesterov: bool) -> Self {
        let n = params.len();
        Sgd { params, buffers: (0..n).map(|_| None).collect(), momentum, weight_decay, nesterov }
    }

    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Sets every gradient to None-equivalent (zero and detached), like `zero_grad(set_to_none=True)`.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// The gradients that exist, in parameter order.
    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect()
    }

    /// `clip_grad_norm_(params, max_norm)`: scales all gradients by `min(1, max_norm/(total+1e-6))`
    /// where `total` is the L2 norm over all gradients. Returns `total` (may be inf/NaN, like torch).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads = self.grads();
        if grads.is_empty() {
            return 0.0;
        }
        let _guard = tch::no_grad_guard();
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm().to_kind(Kind::Float)).collect();
        let total = Tensor::stack(&norms, 0).norm();
        let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
        for mut g in grads {
            g *= coef.to_kind(g.kind());
        }
        total.double_value(&[])
    }

    /// One SGD step at learning rate `lr`:
    /// `g += wd*p; buf = momentum*buf + g (buf = g on the first step); g = g + momentum*buf (nesterov); p -= lr*g`.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        for ((_, p), buf) in self.params.iter_mut().zip(self.buffers.iter_mut()) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let mut d = if self.weight_decay != 0.0 { &g + &*p * self.weight_decay } else { g.copy() };
            if self.momentum != 0.0 {
                match buf {
                    None => *buf = Some(d.copy()),
                    Some(b) => {
                        *b *= self.momentum;
                        *b += &d;
                    }
                }
                let b = buf.as_ref().unwrap();
                if self.nesterov {
                    d += b * self.momentum;
                } else {
                    d = b.copy();
                }
            }
            *p -= d * lr;
        }
    }

    /// The momentum buffers that exist: (parameter name, buffer).
    pub fn momentum_buffers(&self) -> Vec<(String, Tensor)> {
        self.params.iter().zip(&self.buffers).filter_map(|((n, _), b)| b.as_ref().map(|b| (n.clone(), b.shallow_clone()))).collect()
    }

    /// Restores a buffer (copied to the parameter's device); unknown names are an error.
    pub fn set_momentum_buffer(&mut self, name: &str, value: &Tensor) -> Result<(), String> {
        let i = self.params.iter().position(|(n, _)| n == name).ok_or_else(|| format!("momentum buffer for unknown parameter {name}"))?;
        let p = &self.params[i].1;
        if value.size() != p.size() {
            return Err(format!("momentum buffer {name} has shape {:?}, parameter has {:?}", value.size(), p.size()));
        }
        self.buffers[i] = Some(value.to_device(p.device()).to_kind(p.kind()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesterov_matches_torch_by_hand() {
        // torch: p=1.0, grads g1=0.5 then g2=-0.25, lr 0.1, momentum 0.9, wd 0.01, nesterov.
        // step1: d=0.5+0.01=0.51; buf=0.51; d=0.51+0.9*0.51=0.969; p=1-0.0969=0.9031
        // step2: d=-0.25+0.01*0.9031=-0.240969; buf=0.9*0.51-0.240969=0.218031; d=-0.240969+0.9*0.218031=-0.0447411
        //        p=0.9031+0.00447411=0.90757411
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut opt = Sgd::new(vec![("w".into(), p.shallow_clone())], 0.9, 0.01, true);
        for (g, want) in [(0.5f64, 0.9031f64), (-0.25, 0.90757411)] {
            opt.zero_grad();
            let l = &p * g;
            l.sum(Kind::Float).backward();
            opt.step(0.1);
            let v = p.double_value(&[0]);
            assert!((v - want).abs() < 1e-6, "{v} vs {want}");
        }
        assert_eq!(opt.momentum_buffers().len(), 1);
        assert!((opt.momentum_buffers()[0].1.double_value(&[0]) - 0.218031).abs() < 1e-6);
    }

    #[test]
    fn clip_scales_total_norm() {
        let a = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.0f32]).set_requires_grad(true);
        let mut opt = Sgd::new(vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())], 0.0, 0.0, false);
        // grads (3, 4) and (12): total norm 13
        let l = (&a * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float) + (&b * 12.0).sum(Kind::Float);
        l.backward();
        let total = opt.clip_grad_norm(6.5);
        assert!((total - 13.0).abs() < 1e-5);
        let ga = a.grad();
        assert!((ga.double_value(&[0]) - 1.5).abs() < 1e-4 && (ga.double_value(&[1]) - 2.0).abs() < 1e-4);
        assert!((b.grad().double_value(&[0]) - 6.0).abs() < 1e-4);
        // below the threshold nothing changes
        let total = opt.clip_grad_norm(100.0);
        assert!((total - 6.5).abs() < 1e-4);
        assert!((b.grad().double_value(&[0]) - 6.0).abs() < 1e-4);
    }
}
