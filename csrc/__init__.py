"""CUDA C++ sources of the fused kernels, shipped as package data and built on first use."""
