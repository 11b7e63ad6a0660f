"""Matplotlib figures, made from values already computed; the stages save them."""
