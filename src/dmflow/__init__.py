"""dmflow: datamodels (Ilyas et al., ICML 2022) as a Snakemake workflow.

The package, by layer (each imports only from the layers below it):

- ``cli``, ``api``, ``config``: the command line, the notebook entry, the config checks;
- ``stages``: one module per ``rules/*.smk`` file, the only code that reads and writes stage files;
- ``data``, ``store``, ``training``, ``lasso``, ``evaluation``, ``analysis``, ``plots``: computation, arrays in, arrays out;
- ``core``: atomic io, seeds, the results layout, the schema's defaults, status codes.

The Snakemake rules only call the command line (``dmflow <stage> ...``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["load_run", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from dmflow.api import load_run


def __getattr__(name: str):
    """``dmflow.load_run`` imports ``dmflow.api`` on first use (a documented lazy import:
    ``import dmflow.core.io``, e.g. from the Snakefile, must not load pandas and the stages)."""
    if name == "load_run":
        from dmflow.api import load_run

        return load_run
    raise AttributeError(f"module 'dmflow' has no attribute {name!r}")
