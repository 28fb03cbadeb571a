"""Draw the user guide's overview figure: docs/_static/ucal_overview.png.

A toy 2-D embedding of six identities goes through one UCAL round:

(a) the embedding, coloured by the true identities (unknown to UCAL);
(b) the base clustering: identities A and B fall into one impure cluster,
    identity C into two fragments;
(c) SNPS splits the impure cluster: k-medoids groups, the medoid pair is
    asked, "different" splits it;
(d) MPPS ranks centroid pairs and asks those before the largest similarity
    gap; "same" merges the two fragments of C;
(e) the label memory infers a pair from two earlier answers, so the oracle
    is not asked;
(f) the refined clusters the network trains on.

Panels (c) to (e) are computed by ucal itself (SNPSSplitter, MPPSMerger,
LabelMemory with a simulated oracle); only the base clustering of this toy
uses plain DBSCAN on the 2-D points, so that the picture shows both kinds of
error. Run from the repository root::

    python docs/figures/make_user_guide_figure.py
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from sklearn.cluster import DBSCAN  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the working tree, installed or not
from ucal import LabelMemory, LabelOracle, MPPSMerger, SNPSSplitter  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "_static" / "ucal_overview.png"
SEED = 3

# identity -> (centre, spread, count); C is drawn as two camera views apart
IDENTITIES = {
    "A": ([0.0, 0.0], 0.22, 18),
    "B": ([0.85, 0.15], 0.22, 18),
    "C1": ([3.2, 2.4], 0.2, 12),
    "C2": ([4.7, 2.9], 0.2, 12),
    "D": ([3.4, -0.6], 0.25, 16),
    "E": ([0.4, 2.9], 0.25, 16),
    "F": ([5.3, 0.6], 0.25, 16),
}
PALETTE = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377"]
EXTRA = ["#ee8866", "#44bb99", "#bbcc33", "#99ddff"]
SAME, DIFFERENT, INFERRED = "#228833", "#cc3311", "#7a7a7a"


def make_points(seed=SEED):
    rng = np.random.default_rng(seed)
    points, ids = [], []
    for name, (centre, spread, count) in IDENTITIES.items():
        points.append(np.asarray(centre) + spread * rng.standard_normal((count, 2)))
        ids += [name[0]] * count
    points.append(rng.uniform([-0.6, -1.3], [6.0, 3.6], size=(5, 2)))  # a few strays
    ids += ["noise"] * 5
    names = np.array(ids)
    y = np.unique(names, return_inverse=True)[1]
    y[names == "noise"] = 100 + np.arange(5)  # each stray is its own person
    return np.vstack(points), y, names


def lift(points, height=6.0):
    """3-D unit vectors whose cosine similarity follows the 2-D distances.

    The refiners compare embeddings by cosine similarity; points on a
    sphere cap far above the plane keep the picture's geometry."""
    X = np.column_stack([points, np.full(len(points), height)])
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def cluster_colours(labels, identities):
    """Colour of each cluster: its majority identity's colour, so that the
    panels read alike; a second cluster of the same identity (a fragment)
    gets a colour of its own."""
    colours, used = {}, set()
    clusters = [k for k in np.unique(labels) if k >= 0]
    for k in sorted(clusters, key=lambda k: -np.sum(labels == k)):
        values, counts = np.unique(identities[labels == k], return_counts=True)
        colour = PALETTE[values[np.argmax(counts)] % len(PALETTE)]
        if colour in used:
            colour = next(c for c in EXTRA if c not in used)
        used.add(colour)
        colours[k] = colour
    return colours


def scatter(ax, points, labels, identities, title, alpha=0.9):
    colours = cluster_colours(labels, identities)
    for k in np.unique(labels):
        mask = labels == k
        if k < 0:
            ax.scatter(*points[mask].T, s=14, marker="x", c="#999999", lw=1)
        else:
            ax.scatter(*points[mask].T, s=16, color=colours[k], alpha=alpha, lw=0)
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(-1.0, 6.4)
    ax.set_ylim(-1.6, 4.0)
    ax.set_aspect("equal")


def ask_line(ax, points, i, j, answer, text=None):
    colour = {1: SAME, 0: DIFFERENT}.get(int(answer), INFERRED)
    style = "-" if answer in (0, 1) else "--"
    ax.plot(*points[[i, j]].T, style, color=colour, lw=2, zorder=3)
    ax.scatter(*points[[i, j]].T, s=60, facecolor="white", edgecolor="black", lw=1.2, zorder=4)
    if text:
        mid = points[[i, j]].mean(axis=0)
        ax.annotate(text, mid, xytext=(0, 9), textcoords="offset points", ha="center", fontsize=10,
                    color=colour, fontweight="bold", zorder=5)


def main():
    points, y, names = make_points()
    X = lift(points)
    base = DBSCAN(eps=0.45, min_samples=4).fit_predict(points)
    oracle = LabelOracle(y)
    memory = LabelMemory()

    # the paper's k_max = floor(sqrt(|C| / 2) / 2): only the 36-image cluster is examined
    snps = SNPSSplitter(random_state=0).fit(X, labels=base, oracle=oracle, label_memory=memory)
    mpps = MPPSMerger(max_merge_ratio=0.5).fit(X, labels=snps.labels_, oracle=oracle, label_memory=memory)

    fig, axes = plt.subplots(2, 3, figsize=(11.5, 7.6))
    (a, b, c), (d, e, f) = axes

    true_labels = np.unique(names, return_inverse=True)[1]
    true_labels[names == "noise"] = -1
    identity = true_labels  # colours follow the true identities
    scatter(a, points, true_labels, identity, "(a) embedding, true identities\n(unknown to UCAL)")
    for name in "ABCDEF":
        centre = points[names == name].mean(axis=0)
        a.annotate(name, centre, xytext=(0, 13), textcoords="offset points", ha="center", fontsize=9,
                   fontweight="bold")

    scatter(b, points, base, identity, "(b) base clustering: A+B impure,\nC in two fragments")

    # (c) SNPS: the medoid pair of the split candidate, asked
    scatter(c, points, snps.labels_, identity,
            f"(c) SNPS: k-medoids groups, medoid pair asked\n{snps.n_splits_} split, "
            f"{snps.n_queries_} pair asked", alpha=0.5)
    for (i, j), ans in zip(snps.queries_["pairs"], snps.queries_["answers"]):
        ask_line(c, points, i, j, ans, "different: split" if ans == 0 else "same: keep")

    # (d) MPPS: the centroid pairs before the largest similarity gap, asked
    scatter(d, points, mpps.labels_, identity,
            f"(d) MPPS: centroid pairs before the largest gap\n{mpps.n_merges_} merge, "
            f"{mpps.n_queries_} pairs asked", alpha=0.5)
    for (i, j), ans in zip(mpps.queries_["pairs"], mpps.queries_["answers"]):
        ask_line(d, points, i, j, ans, "same: merge" if ans == 1 else None)

    # (e) label memory: a "same" and a "different" answer imply a third pair
    answered = list(zip(mpps.queries_["pairs"].tolist(), mpps.queries_["answers"].tolist()))
    same = [p for p, ans in answered if ans == 1]
    diff = [p for p, ans in answered if ans == 0]
    scatter(e, points, mpps.labels_, identity,
            "(e) label memory: a pair implied by earlier\nanswers is never sent to the oracle", alpha=0.2)
    if same:
        i, j = same[0]
        touching = [(p, q) for p, q in diff if p in (i, j) or q in (i, j)]
        if touching:
            p, q = touching[0]
            partner, k = (p, q) if p in (i, j) else (q, p)
        else:  # no such answer in this round: record one, as a later round would
            partner, k = j, int(np.flatnonzero(names == "F")[0])
            memory.record([[partner, k]], [False])
        other = i if partner == j else j
        asked_before = memory.n_queries
        inferred = memory.ask([[other, k]], oracle)[0]
        if memory.n_queries != asked_before or inferred != 0:
            raise RuntimeError("the label memory should have inferred this pair")
        ask_line(e, points, i, j, 1, "same")
        ask_line(e, points, partner, k, 0, "different")
        ask_line(e, points, other, k, -2, "inferred: different")
        for index, letter, offset in ((other, "p", (-13, -4)), (partner, "q", (13, -4)), (k, "r", (0, -17))):
            e.annotate(letter, points[index], xytext=offset, textcoords="offset points", fontsize=10,
                       fontstyle="italic", fontweight="bold", ha="center", zorder=6)

    n_pairs = len(points) * (len(points) - 1) // 2
    n_asked = snps.n_queries_ + mpps.n_queries_
    scatter(f, points, mpps.labels_, identity,
            f"(f) refined clusters the network trains on\n{n_asked} of {n_pairs} pairs asked "
            f"({100 * n_asked / n_pairs:.2f}%)")

    handles = [
        Line2D([], [], color=SAME, lw=2, label='oracle: "same"'),
        Line2D([], [], color=DIFFERENT, lw=2, label='oracle: "different"'),
        Line2D([], [], color=INFERRED, lw=2, ls="--", label="inferred by the label memory"),
        Line2D([], [], marker="o", ls="", markerfacecolor="white", markeredgecolor="black",
               label="image shown to the oracle"),
        Line2D([], [], marker="x", ls="", color="#999999", label="not clustered"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1), h_pad=2.0)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=120)
    print(f"saved {OUT}")  # a script, not the library: printing is its output


if __name__ == "__main__":
    main()
