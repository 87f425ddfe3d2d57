//! The training programs' steps and evaluations, each a [`crate::training::Task`] that the
//! example binary hands to [`crate::training::Run`]; tests drive them without a binary.
pub mod bone_suppression;
pub mod classify;
pub mod pretrain;
