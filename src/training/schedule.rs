//! Learning rate per epoch, as the original `adjust_learning_rate` (set once at each epoch start).
//!
//! This is the MoCo code's closed form, not a `torch.optim.lr_scheduler`: its cosine is
//! `CosineAnnealingLR(T_max=epochs, eta_min=0)` in closed form (PyTorch's scheduler updates the lr
//! recursively: over 200 epochs from 0.03 the two differ by at most 1e-17, 5e-16 relative), and
//! its step decay is `MultiStepLR(milestones, gamma=0.1)`. The pretraining tests pin this form;
//! the generic schedulers with PyTorch-compatible state are in [`crate::optim::schedule`].
use std::f64::consts::PI;

/// Cosine (CheSS) or step decay.
#[derive(Debug, Clone, PartialEq)]
pub enum LrSchedule {
    /// `lr * 0.5 * (1 + cos(pi * epoch / epochs))`.
    Cosine,
    /// `lr * 0.1^(number of milestones <= epoch)` (MoCo's `--schedule 120 160`).
    Step(Vec<u64>),
}

impl LrSchedule {
    pub fn lr(&self, base: f64, epoch: u64, epochs: u64) -> f64 {
        match self {
            Self::Cosine => base * 0.5 * (1.0 + (PI * epoch as f64 / epochs.max(1) as f64).cos()),
            Self::Step(milestones) => {
                let passed = milestones.iter().filter(|&&m| epoch >= m).count();
                base * 0.1f64.powi(passed as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_matches_the_recipe_formula() {
        let s = LrSchedule::Cosine;
        assert_eq!(s.lr(0.03, 0, 200), 0.03);
        assert!((s.lr(0.03, 100, 200) - 0.015).abs() < 1e-15);
        assert!(s.lr(0.03, 199, 200) < 1e-5);
        let st = LrSchedule::Step(vec![120, 160]);
        assert_eq!(st.lr(0.03, 119, 200), 0.03);
        assert!((st.lr(0.03, 120, 200) - 0.003).abs() < 1e-15);
        assert!((st.lr(0.03, 160, 200) - 0.0003).abs() < 1e-15);
    }
}
