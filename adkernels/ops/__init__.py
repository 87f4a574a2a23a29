"""Public ops: validation, backend choice, autograd and fake kernels, one module per family."""
