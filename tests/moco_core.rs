//! MoCo mechanics that do not need a reference run: queue arithmetic, the key encoder's
//! independence from gradients, input validation and loss scaling.
use chess::model::{self, Arch, Moco, MocoConfig, MocoTrainer, ModelError, StateDict, StepOptions};
use chess::optim::GradScaler;
use chess::{Precision, SgdConfig};
use tch::{Device, Kind, Tensor};

fn tiny(queue_size: i64, bn_splits: i64) -> MocoConfig {
    MocoConfig { arch: Arch::ResNet18, dim: 16, queue_size, bn_splits, ..MocoConfig::default() }
}

fn views(n: i64) -> (Tensor, Tensor) {
    let q = Tensor::randn([n, 1, 32, 32], (Kind::Float, Device::Cpu));
    let k = &q + 0.1 * Tensor::randn_like(&q);
    (q, k)
}

#[test]
fn fresh_model_matches_the_recipe_layout() {
    tch::manual_seed(0);
    let moco = Moco::new(tiny(10, 1), Device::Cpu).unwrap();
    let state = model::state_dict(&moco, "");
    let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"encoder_q.fc.0.weight") && names.contains(&"encoder_k.fc.2.bias"));
    assert!(names.contains(&"encoder_q.layer4.1.bn2.num_batches_tracked"));
    assert_eq!(&names[..2], ["queue", "queue_ptr"], "own buffers first, as PyTorch orders them");
    // Key encoder starts as a copy of the query encoder and takes no gradients.
    for (q, k) in moco.encoder_q().parameters().iter().zip(moco.encoder_k().parameters()) {
        assert_eq!(q, &k);
        assert!(q.requires_grad() && !k.requires_grad());
    }
    // Queue columns are unit vectors.
    assert_eq!(moco.queue().size(), [16, 10]);
    let norms = moco.queue().norm_scalaropt_dim(2, [0], false);
    assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
    assert_eq!(moco.queue_ptr().int64_value(&[0]), 0);
}

#[test]
fn enqueue_wraps_around_when_k_is_not_a_multiple_of_the_batch() {
    let moco = Moco::new(tiny(10, 1), Device::Cpu).unwrap();
    for step in 0..3 {
        let keys = Tensor::full([4, 16], step as f64 + 1.0, (Kind::Float, Device::Cpu));
        moco.enqueue(&keys);
    }
    // Writes: columns 0-3 <- 1, 4-7 <- 2, 8, 9, 0, 1 <- 3.
    let row: Vec<f32> = Vec::try_from(moco.queue().get(0)).unwrap();
    assert_eq!(row, [3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0]);
    assert_eq!(moco.queue_ptr().int64_value(&[0]), 2);
}

#[test]
fn momentum_update_moves_keys_towards_queries() {
    let moco = Moco::new(MocoConfig { momentum: 0.9, ..tiny(8, 1) }, Device::Cpu).unwrap();
    let q = moco.encoder_q().parameters()[0].shallow_clone();
    let k = moco.encoder_k().parameters()[0].shallow_clone();
    let k0 = k.copy();
    tch::no_grad(|| {
        let _ = q.shallow_clone().g_add_scalar_(1.0);
    });
    moco.momentum_update().unwrap();
    let expected = &k0 * 0.9 + (&k0 + 1.0) * 0.1;
    assert!((&k - expected).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn a_step_trains_the_query_encoder_only_and_fills_the_queue() {
    tch::manual_seed(3);
    let moco = Moco::new(tiny(12, 2), Device::Cpu).unwrap();
    let mut trainer = MocoTrainer::new(moco, SgdConfig::default(), StepOptions::default()).unwrap();
    let q_before = trainer.model.encoder_q().parameters()[0].copy();
    let k_before = trainer.model.encoder_k().parameters()[0].copy();
    let (a, b) = views(8);
    let stats = trainer.step(&a, &b, 0.03).unwrap();
    let v = stats.values();
    assert!(v.loss.is_finite() && v.loss > 0.0);
    assert!((0.0..=100.0).contains(&v.top1) && v.top5 >= v.top1);
    assert!(stats.applied);
    let q_after = &trainer.model.encoder_q().parameters()[0];
    let k_after = &trainer.model.encoder_k().parameters()[0];
    assert!(q_after != &q_before, "query encoder was updated");
    assert!(!k_after.grad().defined(), "key encoder has no gradient");
    // After one step the key moved by (1 - m) of the query's change, no more.
    let moved = (k_after - &k_before).abs().max().double_value(&[]);
    let q_moved = (q_after - &q_before).abs().max().double_value(&[]);
    assert!(moved > 0.0 && moved <= 0.0011 * q_moved, "{moved} vs {q_moved}");
    assert_eq!(trainer.model.queue_ptr().int64_value(&[0]), 8);
    // The new keys are unit vectors in columns 0..8.
    let cols = trainer.model.queue().narrow(1, 0, 8).norm_scalaropt_dim(2, [0], false);
    assert!((cols - 1.0).abs().max().double_value(&[]) < 1e-5);
    assert_eq!(trainer.optimizer.momentum_buffers().iter().filter(|b| b.is_some()).count(), 64);
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let moco = Moco::new(tiny(16, 4), Device::Cpu).unwrap();
    let mut trainer = MocoTrainer::new(moco, SgdConfig::default(), StepOptions::default()).unwrap();
    let (a, b) = views(6);
    assert!(
        matches!(trainer.step(&a, &b, 0.1), Err(ModelError::Input(_))),
        "6 is not a multiple of 4 splits"
    );
    let (a, _) = views(8);
    let (b, _) = views(4);
    assert!(matches!(trainer.step(&a, &b, 0.1), Err(ModelError::Input(_))), "views of different shapes");
    let rgb = Tensor::zeros([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    assert!(
        matches!(trainer.step(&rgb, &rgb, 0.1), Err(ModelError::Input(_))),
        "3 channels into a 1-channel encoder"
    );
    let (a, b) = views(32);
    assert!(matches!(trainer.step(&a, &b, 0.1), Err(ModelError::Input(_))), "batch larger than K");
    for bad in [
        MocoConfig { temperature: 0.0, ..tiny(16, 1) },
        MocoConfig { bn_splits: 0, ..tiny(16, 1) },
        MocoConfig { in_channels: 2, ..tiny(16, 1) },
        MocoConfig { queue_size: 2, ..tiny(16, 1) },
    ] {
        assert!(matches!(Moco::new(bad, Device::Cpu), Err(ModelError::Config(_))), "{bad:?}");
    }
    assert!("resnet101".parse::<Arch>().is_err());
}

#[test]
fn fp16_steps_run_with_loss_scaling() {
    tch::manual_seed(4);
    let moco = Moco::new(tiny(16, 1), Device::Cpu).unwrap();
    let options = StepOptions { precision: Precision::Fp16, channels_last: false };
    let mut trainer = MocoTrainer::new(moco, SgdConfig::default(), options).unwrap();
    // Like torch.amp.GradScaler, the first steps may overflow at 2^16 and be skipped while the
    // scale halves; training then proceeds.
    let mut skipped = 0;
    let mut applied = 0;
    while applied < 2 && skipped < 16 {
        let (a, b) = views(4);
        let stats = trainer.step(&a, &b, 0.03).unwrap();
        assert!(stats.values().loss.is_finite());
        if stats.applied { applied += 1 } else { skipped += 1 }
    }
    assert!(applied > 0, "no fp16 step was applied");
    assert_eq!(trainer.scaler().unwrap().scale, 65536.0 / f64::powi(2.0, skipped));
}

#[test]
fn grad_scaler_skips_and_backs_off_on_overflow() {
    let mut scaler = GradScaler { growth_interval: 2, ..GradScaler::default() };
    let finite = Tensor::from_slice(&[65536.0f32, -131072.0]);
    assert!(scaler.unscale_and_update(&[finite.shallow_clone()]));
    assert_eq!(Vec::<f32>::try_from(&finite).unwrap(), [1.0, -2.0], "unscaled in place");
    assert!(scaler.unscale_and_update(&[Tensor::from_slice(&[1.0f32])]));
    assert_eq!(scaler.scale, 131072.0, "doubled after growth_interval clean steps");
    assert!(!scaler.unscale_and_update(&[Tensor::from_slice(&[f32::INFINITY])]));
    assert_eq!(scaler.scale, 65536.0);
    assert_eq!(scaler.growth_tracker, 0);
}
