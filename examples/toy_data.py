"""The paper's five toy datasets, drawn exactly as the released ``grow-crystals`` code draws them.

Each seed drives NumPy's legacy generator (``np.random.seed(seed)`` there, ``RandomState(seed)``
here: the same stream), so every seed's samples and train/test split are the released ones.
A task returns ``tokens [1000, T]`` (all 576 pairs for permutations), ``labels`` and the vocabulary
size; :func:`split` makes the train/test split. (``FACTS.md`` 1d.)
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

SAMPLES = 1000


class Task(NamedTuple):
    tokens: np.ndarray  # [num, T] int32
    labels: np.ndarray  # [num] int32
    vocab_size: int
    pca_rows: slice  # the embedding rows the released metric reads


def lattice(seed: int, num: int = SAMPLES, side: int = 5) -> Task:
    """Three corners of a parallelogram on a ``side x side`` grid (ids ``5 a + b``); label the
    fourth, ``-p + q + r``. Candidates drawn uniformly, the first ``num`` inside the grid kept."""
    rng = np.random.RandomState(seed)
    x = rng.choice(side, 5 * num * 2 * 3).reshape(5 * num, 3, 2)
    target = -x[:, 0, :] + x[:, 1, :] + x[:, 2, :]
    keep = np.where(np.prod((target >= 0) * (target < side), axis=1) == 1)[0][:num]
    tokens = x[keep, :, 0] * side + x[keep, :, 1]
    labels = target[keep, 0] * side + target[keep, 1]
    return Task(tokens.astype("int32"), labels.astype("int32"), side * side, slice(None))


def modular_addition(seed: int, num: int = SAMPLES, p: int = 31) -> Task:
    """Pairs ``(x, y)`` drawn with replacement from the ``p x p`` table, label ``(x + y) mod p``."""
    rng = np.random.RandomState(seed)
    xx, yy = np.meshgrid(np.arange(p), np.arange(p))
    table = np.transpose([xx.reshape(-1), yy.reshape(-1)])
    tokens = table[rng.choice(len(table), size=num, replace=True)]
    labels = (tokens[:, 0] + tokens[:, 1]) % p
    return Task(tokens.astype("int32"), labels.astype("int32"), p, slice(None))


def equivalence(seed: int, num: int = SAMPLES, p: int = 40, mod: int = 5) -> Task:
    """``x, y`` in ``0..p-1``; label token ``p`` when ``x = y (mod 5)``, else ``p + 1``."""
    rng = np.random.RandomState(seed)
    tokens = rng.choice(range(p), num * 2).reshape(num, 2)
    labels = np.where((tokens[:, 0] - tokens[:, 1]) % mod == 0, p, p + 1)
    return Task(tokens.astype("int32"), labels.astype("int32"), p + 2, slice(None))


def genealogy(seed: int, num: int = SAMPLES, p: int = 127) -> Task:
    """A complete binary tree of nodes ``1..p-1``; input (node, relation), label its parent
    (relation token ``p``), grandparent (``p + 1``) or sibling (``p + 2``)."""
    rng = np.random.RandomState(seed)
    facts = []
    for i in range(1, p):
        if i >= 2:
            facts.append([i, p, i // 2])
        if i >= 4:
            facts.append([i, p + 1, i // 4])
        if i > 1:
            facts.append([i, p + 2, i + 1 if i % 2 == 0 else i - 1])
    facts = np.array(facts)[rng.choice(len(facts), size=num, replace=True)]
    return Task(facts[:, :2].astype("int32"), facts[:, 2].astype("int32"), p + 3, slice(1, p))


def permutations(seed: int, num: int = SAMPLES) -> Task:
    """All 576 products of two elements of S4 (ids in ``itertools.permutations`` order); the seed
    and ``num`` draw nothing (the released code ignores them)."""
    del seed, num
    perms = list(itertools.permutations(range(4)))
    index = {perm: i for i, perm in enumerate(perms)}
    pairs = list(itertools.product(range(len(perms)), repeat=2))
    labels = [index[tuple(np.array(perms[i])[np.array(perms[j])])] for i, j in pairs]
    return Task(np.array(pairs, "int32"), np.array(labels, "int32"), len(perms), slice(None))


TASKS = {
    "modular_addition": modular_addition,
    "lattice": lattice,
    "equivalence": equivalence,
    "genealogy": genealogy,
    "permutations": permutations,
}


class Split(NamedTuple):
    train_tokens: np.ndarray
    train_labels: np.ndarray
    test_tokens: np.ndarray
    test_labels: np.ndarray


def split(task: Task, seed: int, train_fraction: float = 0.8) -> Split:
    """The released split: ``int(num * fraction)`` samples drawn without replacement (seeded
    again by ``seed``), the rest the test set (in index order)."""
    num = len(task.labels)
    train = np.random.RandomState(seed).choice(num, int(num * train_fraction), replace=False)
    test = np.setdiff1d(np.arange(num), train)
    return Split(task.tokens[train], task.labels[train], task.tokens[test], task.labels[test])


def paper_seeds(count: int = 20) -> list[int]:
    """The released seeds: ``np.linspace(0, 1000, 20, dtype=int)`` (0, 52, 105, ..., 1000)."""
    return [int(s) for s in np.linspace(0, 1000, 20, dtype=int)[:count]]
