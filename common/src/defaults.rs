//! The one place for nnU-Net v2's training defaults (`nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py`,
//! `nnUNetTrainer.__init__`) and for the small budget of the built-in dataset. The worker's
//! `TrainingConfig`, the coordinator's run budget and the CLIs all read them from here.

/// Epochs (`self.num_epochs = 1000`).
pub const EPOCHS: u32 = 1000;
/// Training iterations per epoch (`self.num_iterations_per_epoch = 250`).
pub const ITERATIONS_PER_EPOCH: u32 = 250;
/// Validation iterations per epoch (`self.num_val_iterations_per_epoch = 50`).
pub const VAL_ITERATIONS_PER_EPOCH: u32 = 50;
/// `checkpoint_latest` every this many epochs (`self.save_every = 50`).
pub const SAVE_EVERY: u32 = 50;
/// Initial learning rate of the poly schedule (`self.initial_lr = 1e-2`).
pub const INITIAL_LR: f64 = 1e-2;
/// L2 weight decay (`self.weight_decay = 3e-5`).
pub const WEIGHT_DECAY: f64 = 3e-5;
/// SGD Nesterov momentum (`configure_optimizers`: `momentum=0.99`).
pub const MOMENTUM: f64 = 0.99;
/// Fraction of each batch forced to contain foreground (`self.oversample_foreground_percent = 0.33`).
pub const OVERSAMPLE_FOREGROUND_PERCENT: f64 = 0.33;
/// Max total L2 norm of the gradients (`train_step`: `clip_grad_norm_(..., 12)`).
pub const GRAD_CLIP: f64 = 12.0;
/// Seed of the network initialization and of every batch.
pub const SEED: u64 = 12345;

/// The built-in synthetic dataset's small budget (`nnunet run` with no dataset): epochs,
/// iterations, validation iterations. Finishes in minutes on 2 CPU cores.
pub const BUILTIN_BUDGET: (u32, u32, u32) = (6, 10, 4);
