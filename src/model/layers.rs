//! The generic layers live in [`crate::nn`]; these names keep the model files' imports.
pub use crate::nn::{BatchNorm2d, Conv2d, Linear, NamedTensor, StateDict, TensorRole};
pub(crate) use crate::nn::{join, push};
