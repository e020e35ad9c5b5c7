"""petsc-neural losses (pure torch, scriptable; no petsc4py, no Firedrake)."""
