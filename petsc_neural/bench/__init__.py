"""``petsc-neural bench``: neural preconditioners against PETSc's classical ones.

- :mod:`.run`: cases, timing, the results document, tables and plots;
- :mod:`.baselines`: the classical baselines (options, tuned GAMG, PyAMG), defined once.
"""

from .baselines import CLASSICAL, GAMG_TUNING_GRID, PyAMGPC, best_gamg, gamg_options
from .run import (
    PC_SPECS,
    RESULTS_SCHEMA,
    BenchConfig,
    config_from_args,
    ksp_options,
    markdown,
    parse_pc,
    plot_histories,
    plot_scaling,
    register,
    run_bench,
    run_case,
    tune_gamg,
    validate,
    write_outputs,
)

__all__ = [
    "CLASSICAL",
    "GAMG_TUNING_GRID",
    "PyAMGPC",
    "best_gamg",
    "gamg_options",
    "PC_SPECS",
    "RESULTS_SCHEMA",
    "BenchConfig",
    "config_from_args",
    "ksp_options",
    "markdown",
    "parse_pc",
    "plot_histories",
    "plot_scaling",
    "register",
    "run_bench",
    "run_case",
    "tune_gamg",
    "validate",
    "write_outputs",
]
