"""dmflow: datamodels (Ilyas et al., ICML 2022) as a Snakemake workflow.

The package holds every stage as plain functions over arrays and paths; the
Snakemake rules only call its command line (``dmflow <stage> ...``).
"""

__version__ = "0.1.0"

__all__ = ["load_run", "__version__"]


def load_run(results, alpha=None):
    """Open a finished run for notebooks; see ``dmflow.api``."""
    from dmflow.api import load_run as _load_run

    return _load_run(results, alpha)
