"""Triton kernels with the same low-level contracts as csrc (imported lazily: triton is optional)."""
