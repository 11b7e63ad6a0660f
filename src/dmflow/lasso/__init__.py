"""The lasso: centred moments of the store's rows, the batched solver (a torch
reference and a fused CPU backend behind one interface, cvxpy as the exact
reference), and the per-target lambda path with its validation choice and refit."""
