//! Tensor ops, one file per family. Each op checks its arguments (shapes, dtypes, devices, dims),
//! opens a profiler scope, and dispatches to the kernel for the tensor's device. This is the one
//! door every op passes through.

pub mod cast;
pub mod random;
