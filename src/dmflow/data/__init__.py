"""Datasets: the sources (digits, npz, CIFAR-10, image folders), the arrays of
``data.npz``, training-time augmentation and the stacked minibatches."""
