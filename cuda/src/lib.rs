//! `cuda`: the CUDA runtime (cudarc, NVRTC kernels, cuBLAS, NCCL). Filled by the CUDA backend issue.
