//! Nodule generation: SPADE synthesising chest radiographs from label maps (background /
//! nodule), trained with a CheSS perceptual loss, as in the CheSS paper's fourth downstream task.
//!
//! - [`gan`]: the three networks, their optimisers and the G and D steps.
pub mod gan;

pub use gan::{GanError, LossWeights, SpadeGan, adam_configs};
