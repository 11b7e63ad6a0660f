"""Datamodel embeddings (paper, Sec. 6): PCA and spectral clustering.

Each target is represented by its weight vector normalised to unit length, so that
targets are compared by which training examples drive them, not by how strongly.
The principal components are directions in training-example space; the examples at
both ends of a component are what that direction of variation is about.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.cluster import SpectralClustering
from sklearn.decomposition import PCA

from dmflow.core.tables import COMPONENT_ENDS


def normalised_embeddings(weight: np.ndarray) -> np.ndarray:
    """[T, n]: each target's weights divided by their L2 norm (zero stays zero)."""
    w = weight.T.astype(np.float64)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return np.divide(w, norms, out=np.zeros_like(w), where=norms > 0)


def embed(
    weight: np.ndarray, *, components: int, clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(coordinates [T, c], component loadings [c, n], explained variance ratio [c], cluster labels [T])."""
    z = normalised_embeddings(weight)
    components = min(components, *z.shape)
    pca = PCA(n_components=components, random_state=seed).fit(z)
    coords = pca.transform(z)
    clusters = min(clusters, len(z) - 1)
    if clusters >= 2:
        labels = SpectralClustering(
            n_clusters=clusters, affinity="nearest_neighbors", n_neighbors=min(10, len(z) - 1), random_state=seed
        ).fit_predict(z)
    else:
        labels = np.zeros(len(z), dtype=int)
    return coords, pca.components_, pca.explained_variance_ratio_, labels


def component_ends(loadings: np.ndarray, y_train: np.ndarray, train_ids: np.ndarray, *, k: int) -> pd.DataFrame:
    """The k training examples with the largest and the smallest loading on each component."""
    records = []
    for c, load in enumerate(loadings):
        order = np.argsort(load, kind="stable")
        for end, idx in (("positive", order[::-1][:k]), ("negative", order[:k])):
            for rank, i in enumerate(idx, start=1):
                records.append((c + 1, end, rank, int(i), int(train_ids[i]), int(y_train[i]), float(load[i])))
    return pd.DataFrame.from_records(records, columns=COMPONENT_ENDS.names)
