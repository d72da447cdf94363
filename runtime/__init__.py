"""The cnnc runtime: execution plans and CPU/CUDA kernels."""
