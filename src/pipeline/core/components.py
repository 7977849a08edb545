"""Connected components over index pairs (scipy.sparse.csgraph), the one union-find of the project.

Used for near-duplicate groups (audit), split units (split) and damage clusters (crops). Every
component is named by its smallest member, so results do not depend on the order of the pairs.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def component_roots(n: int, pairs: Iterable[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """For each of the nodes 0..n-1, the smallest node of its component (int64 array of length n)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.asarray(pairs if isinstance(pairs, np.ndarray) else list(pairs), dtype=np.int64).reshape(-1, 2)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise ValueError(f"pair index outside 0..{n - 1}")
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n, dtype=np.int64))
    return smallest[labels]


def components(n: int, pairs: Iterable[tuple[int, int]] | np.ndarray) -> list[list[int]]:
    """The components of 0..n-1 as sorted lists of members, ordered by their smallest member."""
    roots = component_roots(n, pairs)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(roots.tolist()):
        groups.setdefault(r, []).append(i)
    return [groups[r] for r in sorted(groups)]
