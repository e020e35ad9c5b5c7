"""NPO, the Neural Preconditioning Operator (seed 000): network, loss, trainer, PC.

- :mod:`.network`: the NAMG operator (pure torch, scriptable);
- :mod:`.loss`: condition, residual and data losses;
- :mod:`.train`: ``petsc-neural train npo``;
- :mod:`.pc`: :class:`~petsc_neural.npo.pc.NPO`, the PETSc python PC.
"""
