"""The 5-point grid Laplacian the tests share (imported by name: tests/ is on sys.path)."""

from __future__ import annotations

from petsc4py import PETSc


def laplacian(n: int, comm=PETSc.COMM_WORLD, local_rows: int | None = None,
              varying: bool = True) -> PETSc.Mat:
    """5-point Laplacian on an n x n grid, ``local_rows`` rows per rank (PETSc's split if None).

    ``varying``: the diagonal is ``4 + (row % 7) / 2`` (so Jacobi matters); else 4.
    """
    N = n * n
    size = (local_rows, N) if local_rows is not None else (None, N)
    A = PETSc.Mat().createAIJ([size, size], nnz=(5, 4), comm=comm)
    rs, re = A.getOwnershipRange()
    for row in range(rs, re):
        i, j = divmod(row, n)
        A.setValue(row, row, 4.0 + (row % 7) * 0.5 if varying else 4.0)
        for ii, jj in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if 0 <= ii < n and 0 <= jj < n:
                A.setValue(row, ii * n + jj, -1.0)
    A.assemble()
    return A
