"""What the answers say about pairs of clusters: votes, and the decision rule.

A pair of clusters (or of k-medoids groups) is related by every answered
image pair across it. The refiners decide from these *votes* instead of
from one representative pair, so that an answer keeps working when the
clusters are redrawn the next epoch, and so that one wrong answer among
several does not decide:

* ``n_same`` and ``n_diff`` count the direct answers across the two sets;
* the relation is **same** when ``n_same >= need_same`` and
  ``n_same > n_diff``, **different** when ``n_diff >= need_diff`` and
  ``n_diff > n_same``, and **open** otherwise (nothing answered yet, a tie,
  or a single "same" between two large clusters, which a second pair must
  confirm);
* ``need_same`` is 2 when both sets have at least ``confirm_size``
  members (a merge of two large clusters on one answer is confirmed by a
  second pair), else 1; ``need_diff`` is 1 unless the caller asks for more.
"""

import numpy as np

__all__ = ["DIFFERENT", "OPEN", "SAME", "Groups", "Votes", "decide", "fresh_pair"]

SAME, DIFFERENT, OPEN = 1, 0, -1

_SHIFT = np.int64(32)


def decide(n_same, n_diff, need_same=1, need_diff=1):
    """The relation (SAME, DIFFERENT or OPEN) that votes settle; vectorised."""
    n_same, n_diff = np.asarray(n_same), np.asarray(n_diff)
    out = np.full(np.broadcast(n_same, n_diff).shape, OPEN, dtype=np.int8)
    out[(n_same >= need_same) & (n_same > n_diff)] = SAME
    out[(n_diff >= need_diff) & (n_diff > n_same)] = DIFFERENT
    return out


class Votes:
    """Direct answers between sets of samples labelled by ``labels``.

    Parameters
    ----------
    memory : LabelMemory
        Where the answers are (its current answer of every exact pair).
    labels : ndarray of int
        The set of each sample (``-1``: in none; its answers are ignored).
    """

    def __init__(self, memory, labels):
        self.labels = np.asarray(labels)
        pairs, same = memory.to_arrays()  # canonical (i < j), unique, definite answers
        self.answered = set(map(tuple, pairs.tolist()))
        self._counts = {}
        self._inside = []  # (i, j, same) with both samples in one set
        # the bulk of the answers, vectorised; later answers go through add()
        ok = pairs[:, 1] < len(self.labels) if len(pairs) else np.zeros(0, bool)
        pairs, same = pairs[ok], same[ok]
        la, lb = self.labels[pairs[:, 0]], self.labels[pairs[:, 1]]
        keep = (la >= 0) & (lb >= 0)
        inside = keep & (la == lb)
        self._inside = [
            (int(i), int(j), int(s)) for (i, j), s in zip(pairs[inside], same[inside])
        ]
        across = keep & (la != lb)
        if across.any():
            a = np.minimum(la[across], lb[across]).astype(np.int64)
            b = np.maximum(la[across], lb[across]).astype(np.int64)
            n = int(max(a.max(), b.max())) + 1
            keys, inverse = np.unique(a * n + b, return_inverse=True)
            n_same = np.bincount(inverse, weights=same[across], minlength=len(keys))
            n_diff = np.bincount(inverse, minlength=len(keys)) - n_same
            self._counts = {
                (int(k // n), int(k % n)): (int(s), int(d))
                for k, s, d in zip(keys, n_same, n_diff)
            }

    def add(self, pairs, codes):
        """Count new answers (codes 1 same, 0 different).

        A pair answered -1 (not sure, or not sent) counts for nothing but
        is marked tried, so that :func:`fresh_pair` moves on to another.
        """
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        codes = np.asarray(codes)
        for (i, j), code in zip(pairs.tolist(), codes.tolist()):
            key = (min(i, j), max(i, j))
            if key in self.answered:
                continue
            self.answered.add(key)
            if code < 0:
                continue
            if max(key) >= len(self.labels):
                continue
            a, b = self.labels[key[0]], self.labels[key[1]]
            if a < 0 or b < 0:
                continue
            if a == b:
                self._inside.append((key[0], key[1], int(code)))
                continue
            ab = (min(a, b), max(a, b))
            same, diff = self._counts.get(ab, (0, 0))
            self._counts[ab] = (same + (code == 1), diff + (code == 0))

    def between(self, a, b):
        """``(n_same, n_diff)`` of the answers across sets ``a`` and ``b``."""
        return self._counts.get((min(a, b), max(a, b)), (0, 0))

    def pairs(self):
        """Every related pair of sets: ``(a, b, n_same, n_diff)`` arrays, ``a < b``."""
        if not self._counts:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, empty, empty
        keys = np.array(list(self._counts), dtype=np.int64)
        counts = np.array(list(self._counts.values()), dtype=np.int64)
        return keys[:, 0], keys[:, 1], counts[:, 0], counts[:, 1]

    def inside(self):
        """Answers between two samples of the same set: ``(i, j, code)`` rows."""
        return np.array(self._inside, dtype=np.int64).reshape(-1, 3)


def fresh_pair(members_a, members_b, Xn, center_a, center_b, answered):
    """The most representative pair across two sets that has no answer yet.

    Members are ranked by similarity to their set's centre; pairs are tried
    by increasing rank sum (the two medoids first), skipping answered ones.
    Returns ``(i, j)`` or None when every pair across has an answer.
    """
    a = members_a[np.argsort(-(Xn[members_a] @ center_a), kind="stable")]
    b = members_b[np.argsort(-(Xn[members_b] @ center_b), kind="stable")]
    for total in range(len(a) + len(b) - 1):
        for r in range(max(0, total - len(b) + 1), min(total, len(a) - 1) + 1):
            i, j = int(a[r]), int(b[total - r])
            if (min(i, j), max(i, j)) not in answered:
                return i, j
    return None


class Groups:
    """Union-find over ``n`` sets, with pairs of groups that must stay apart.

    ``union`` refuses to join two groups marked apart (a known "different"
    anywhere between them blocks the chain A-B, B-C when A and C differ).
    """

    def __init__(self, n):
        self.parent = np.arange(n)
        self._apart = {}

    def find(self, a):
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return root

    def keep_apart(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._apart.setdefault(ra, set()).add(rb)
            self._apart.setdefault(rb, set()).add(ra)

    def apart(self, a, b):
        ra, rb = self.find(a), self.find(b)
        return rb in self._apart.get(ra, ())

    def union(self, a, b):
        """Join the groups of ``a`` and ``b``; False when they are apart (or one already)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb or self.apart(ra, rb):
            return False
        keep, gone = min(ra, rb), max(ra, rb)
        self.parent[gone] = keep
        moved = self._apart.pop(gone, set())
        for other in moved:
            partners = self._apart[other]
            partners.discard(gone)
            partners.add(keep)
        self._apart.setdefault(keep, set()).update(moved)
        return True

    def roots(self):
        return np.array([self.find(a) for a in range(len(self.parent))], dtype=np.int64)
