"""Algebraformer (seed 004): a transformer that solves small dense systems, served in PETSc.

- :mod:`.network`: the transformer and the LSTM/GRU baselines (pure torch, scriptable);
- :mod:`.data`: Chebyshev BVP and Newton-step sets as tensors;
- :mod:`.loss`: relative mean squared error;
- :mod:`.train`: ``petsc-neural train algebraformer|lstm|gru``;
- :mod:`.pc`: :class:`~petsc_neural.algebraformer.pc.Algebraformer`, the PETSc python PC;
- :mod:`.newton`: the l_p regression of §6 with PETSc SNES.
"""
