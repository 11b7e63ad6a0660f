"""The lasso: centred moments of the store's rows, the batched solver (a torch
reference and a fused CPU backend behind one interface, cvxpy as the exact
reference), and the per-target lambda path with its validation choice and refit.

Modules, each importing only those after it: ``path`` (the fit: which path runs, and
its arrays); ``dense`` (the reference path) and ``working_sets`` (the path on
per-target working sets, reading the memory-mapped Grams through ``stored_gram``);
``path_loop`` (the loop over lambdas), ``groups`` (target groups side by side),
``settings`` (the fit's settings, the validation split); ``solvers`` (``torch_solver``,
``fused``, ``cvxpy_solver``), ``spectrum`` (eigenvalue bounds), ``accumulate``
(moments streamed from a store); ``problem``, ``target_major``; ``moments`` (the
types). Each ``*_kernels`` module holds the numba kernels of its one caller
(``fused``, ``working_sets`` with ``stored_gram``, ``accumulate``).
"""
