"""Training of the petsc-neural methods (one module per method; may use firedrake_problems)."""
