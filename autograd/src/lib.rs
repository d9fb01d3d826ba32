//! `autograd`: reverse-mode automatic differentiation over `tensor`.
