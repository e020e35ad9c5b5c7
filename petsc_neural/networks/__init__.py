"""petsc-neural networks (pure torch, scriptable; no petsc4py, no Firedrake)."""
