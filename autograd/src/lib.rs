//! `autograd`: reverse-mode automatic differentiation over `tensor`.
//!
//! Reading order: [`Var`] (a tensor plus the node that produced it, `var.rs`), `backward.rs`
//! (the whole algorithm: topological order, then the chain rule in reverse, accumulating
//! gradients where a value is used twice), then `ops/` (each op's forward next to its backward),
//! and [`gradcheck`] (finite differences in f64). Inference does not need this crate: it runs on
//! plain tensors, or on `Var`s inside [`no_grad`], which records nothing. [`autocast`] runs the
//! matrix products of CUDA f32 operands in f16/bf16 (mixed precision; no effect on the CPU).

mod autocast;
mod backward;
mod gradcheck;
pub mod ops;
mod var;

pub use autocast::{autocast, autocast_dtype, cpu_bf16_products};
pub use backward::Gradients;
pub use gradcheck::{gradcheck, GradcheckOptions};
pub use tensor::{Error, Result};
pub use var::{is_grad_enabled, no_grad, Var};
