"""NeuraLSP (seed 001): network, NLSS loss, trainer, PC (a learned coarse space in PCMG).

- :mod:`.network`: the paper's MLP and the distributable aggregate network;
- :mod:`.loss`: the nested NLSS loss and the subspace loss;
- :mod:`.train`: ``petsc-neural train neuralsp``;
- :mod:`.pc`: :class:`~petsc_neural.neuralsp.pc.NeuraLSP`, the PETSc python PC.
"""
