"""Foundations every other layer uses: atomic file io, seeds, the results layout,
the config schema's defaults, status codes and the compute device. Imports nothing
from the rest of dmflow."""
