"""Seconds per training step of the reference nnU-Net v2 on CPU for a 2D plan, measured like nnUNetTrainer.train_step
(DC_and_CE_loss with batch Dice + DeepSupervisionWrapper weights, SGD nesterov 0.99 / wd 3e-5, clip 12), fp32,
torch.set_num_threads(THREADS). Usage: python bench_train_ref_step.py PATCH STAGES BATCH CHANNELS WARMUP STEPS THREADS."""
import json, sys, time
import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

patch, stages, batch, channels, warmup, steps, threads = (int(a) for a in sys.argv[1:8])
torch.set_num_threads(threads)
feats = [min(512, 32 * 2 ** i) for i in range(stages)]
net = PlainConvUNet(channels, stages, feats, torch.nn.Conv2d, [[3, 3]] * stages, [[1, 1]] + [[2, 2]] * (stages - 1), [2] * stages, 2,
                    [2] * (stages - 1), True, torch.nn.InstanceNorm2d, {'eps': 1e-5, 'affine': True}, None, None,
                    torch.nn.LeakyReLU, {'inplace': True}, deep_supervision=True)
net.apply(InitWeights_He(1e-2))
w = np.array([1 / 2 ** i for i in range(stages - 1)]); w[-1] = 0; w = w / w.sum()
loss = DeepSupervisionWrapper(DC_and_CE_loss({'batch_dice': True, 'smooth': 1e-5, 'do_bg': False, 'ddp': False}, {}, weight_ce=1,
                                             weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss), w)
opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
x = torch.randn(batch, channels, patch, patch)
ts = [torch.randint(0, 2, (batch, 1, patch // 2 ** i, patch // 2 ** i)).float() for i in range(stages - 1)]
for i in range(warmup + steps):
    if i == warmup:
        t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    l = loss(net(x), ts)
    l.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
    opt.step()
    l.item()
print(json.dumps({"patch": patch, "stages": stages, "batch": batch, "threads": threads, "steps": steps,
                  "seconds_per_step": (time.perf_counter() - t) / steps}))
