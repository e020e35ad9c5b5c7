"""petsc-neural: learned preconditioners served inside PETSc."""

__all__: list[str] = []
__version__ = "0.1.0"
