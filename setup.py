"""petsc-neural: learned preconditioners served inside PETSc."""

import re

from setuptools import find_packages, setup

setup(
    name="petsc-neural",
    version=re.search(r'__version__ = "([^"]+)"',
                      open("petsc_neural/_version.py", encoding="utf-8").read()).group(1),
    description="Neural preconditioners served inside PETSc and Firedrake solvers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["petsc_neural*", "pcshell*", "firedrake_problems*"]),
    package_data={"petsc_neural": ["models/*.pt", "models/README.md"]},
    # torch is pinned by the setup script (CPU wheel); petsc4py must be the one
    # built against the cached PETSc, so neither is re-resolved here.
    install_requires=[
        "numpy", "torch>=2.13", "petsc4py==3.26.0", "mpi4py", "h5py", "tqdm", "matplotlib",
        "scipy", "pyamg", "jsonschema", "gmsh",
    ],
    extras_require={
        "test": ["pytest", "mpi-pytest", "pytest-timeout", "ruff"],
    },
    entry_points={"console_scripts": ["petsc-neural=petsc_neural.cli:main"]},
)
