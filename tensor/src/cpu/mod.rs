//! CPU kernels, one file per op family. They work on plain slices plus a `Layout` and know
//! nothing of `Tensor`; the op files in `crate::ops` validate arguments and dispatch here.

pub mod copy;
pub mod math;
