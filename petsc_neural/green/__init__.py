"""GreenInverse (seed 003): a learned Green's function as a compressed approximate inverse.

- :mod:`.network`: the alpha-MSNN kernel network (pure torch, scriptable);
- :mod:`.loss`: PDE residual, boundary and anchor losses;
- :mod:`.train`: the multi-eps staged training (``petsc-neural train green``);
- :mod:`.kernel`: batched evaluation of the kernel on a grid;
- :mod:`.hmatrix`: cluster tree, block partition, low-rank blocks and batched apply;
- :mod:`.pc`: the PETSc preconditioner ``petsc_neural.GreenInverse``.
"""
