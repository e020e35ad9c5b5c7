"""Plot KSP residual histories written by ``-ksp_monitor_true_residual ascii:FILE``.

    python plot_convergence.py -o convergence.png ex2_neural.hist ex2_reference.hist ...

One curve per file (the relative true residual ||r_i||/||b|| against the
iteration; the last solve if a file holds several), labelled by the file name.
Prints one line per file: iterations and final relative residual.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

_LINE = re.compile(
    r"^\s*(\d+) KSP .*?true resid norm\s+(\S+)\s+\|\|r\(i\)\|\|/\|\|b\|\|\s+(\S+)")


def read_history(path: str) -> list[float]:
    """Relative true residuals of the last solve in a monitor file."""
    solves: list[list[float]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = _LINE.match(line)
            if not m:
                continue
            if int(m.group(1)) == 0 or not solves:
                solves.append([])
            solves[-1].append(float(m.group(3)))
    if not solves:
        raise SystemExit(f"plot_convergence: no '-ksp_monitor_true_residual' lines in {path}")
    return solves[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="monitor output files")
    parser.add_argument("-o", "--output", default="convergence.png", help="PNG file")
    parser.add_argument("--title", default="", help="plot title")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path in args.files:
        hist = read_history(path)
        label = os.path.splitext(os.path.basename(path))[0]
        ax.semilogy(range(len(hist)), hist, marker=".", label=label)
        sys.stdout.write(f"{label}: {len(hist) - 1} iterations, "
                         f"final ||r||/||b|| {hist[-1]:.2e}\n")
    ax.set_xlabel("iteration")
    ax.set_ylabel("true residual ||r_i|| / ||b||")
    ax.set_title(args.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    sys.stdout.write(f"plot_convergence: wrote {args.output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
