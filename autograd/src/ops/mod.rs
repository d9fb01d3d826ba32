//! Differentiable ops on `Var`, one file per family, each forward next to its backward. The
//! forward is always the plain tensor op; the backward is a closure over what it needs.

mod activation;
mod arith;
mod attention;
mod dropout;
mod index;
mod layer_norm;
mod loss;
mod matmul;
mod reduce;
mod shape;
mod softmax;
mod unary;
