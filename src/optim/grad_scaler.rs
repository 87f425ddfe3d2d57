//! Dynamic loss scaling for float16 training.
use tch::{Kind, Tensor};

/// Dynamic loss scaling for fp16, as `torch.amp.GradScaler` with its defaults: start at 2^16,
/// halve and skip the step on inf/NaN gradients, double after 2000 clean steps.
#[derive(Debug, Clone, PartialEq)]
pub struct GradScaler {
    pub scale: f64,
    pub growth_tracker: i64,
    pub growth_interval: i64,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self { scale: 65536.0, growth_tracker: 0, growth_interval: 2000 }
    }
}

impl GradScaler {
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * self.scale
    }

    /// Unscales the gradients in place; returns whether all are finite. Updates the scale.
    pub fn unscale_and_update(&mut self, grads: &[Tensor]) -> bool {
        let inv = 1.0 / self.scale;
        let finite = tch::no_grad(|| {
            let mut all_finite = true;
            let mut checks = Vec::with_capacity(grads.len());
            for g in grads {
                let _ = g.shallow_clone().g_mul_scalar_(inv);
                checks.push(g.isfinite().all());
            }
            if !checks.is_empty() {
                all_finite = Tensor::stack(&checks, 0).all().to_kind(Kind::Int64).int64_value(&[]) == 1;
            }
            all_finite
        });
        if finite {
            self.growth_tracker += 1;
            if self.growth_tracker >= self.growth_interval {
                self.scale *= 2.0;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= 0.5;
            self.growth_tracker = 0;
        }
        finite
    }
}
