"""dmflow: datamodels (Ilyas et al., ICML 2022) as a Snakemake workflow.

The package holds every stage as plain functions over arrays and paths; the
Snakemake rules only call its command line (``dmflow <stage> ...``).
"""

__version__ = "0.1.0"
