"""MPPSMerger (Eq. 5, 6), and SNPS + MPPS composed, in pipelines and searches."""

import numpy as np
import pytest
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ucal.active import MPPSMerger, SNPSSplitter
from ucal.active._mpps import candidate_pairs, gap_cut
from ucal.cluster import SelfPacedDBSCAN
from ucal.metrics import pairwise_precision_recall_fscore
from ucal.oracles import LabelMemory, LabelOracle

from .._helpers import FixedLabels, fragment, identities


class RecordingOracle:
    """LabelOracle that keeps every pair it was sent."""

    def __init__(self, y):
        self.oracle = LabelOracle(y)
        self.sent = []

    def __call__(self, pairs):
        self.sent.extend(map(tuple, np.sort(pairs, axis=1).tolist()))
        return self.oracle(pairs)


def test_gap_cut_follows_eq_5_and_6():
    # d = (0.05, 0.35, 0.05, 0.01) -> d* = (0.118, 1, 0.118, 0): first > 0.3 at l = 2
    rows = [[0.9, 0.85, 0.5, 0.45, 0.44], [0.9, 0.2, 0.19, 0.18, 0.1]]
    assert gap_cut(rows, 0.3).tolist() == [2, 1]
    # a lower delta stops at an earlier, smaller gap
    assert gap_cut([[0.9, 0.8, 0.78, 0.5]], 0.2).tolist() == [1]
    assert gap_cut([[0.9, 0.8, 0.78, 0.5]], 0.5).tolist() == [3]
    # no gap at all (rounding aside), or a single candidate: ask the nearest
    assert gap_cut([[0.9, 0.8, 0.7, 0.6, 0.5]], 0.3).tolist() == [1]
    assert gap_cut([[0.4]], 0.3).tolist() == [1]


def test_candidate_pairs_are_unordered_unique_and_by_decreasing_similarity():
    rng = np.random.RandomState(0)
    centers = rng.randn(40, 8)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    pairs, sims = candidate_pairs(centers, l_max=5, delta=0.3)
    assert np.all(pairs[:, 0] < pairs[:, 1])
    assert len(np.unique(pairs, axis=0)) == len(pairs)
    assert np.all(np.diff(sims) <= 0)
    np.testing.assert_allclose(sims, np.einsum("ij,ij->i", centers[pairs[:, 0]], centers[pairs[:, 1]]))
    # every centroid's nearest neighbour is among the candidates
    S = centers @ centers.T
    np.fill_diagonal(S, -np.inf)
    nearest = np.sort(np.stack([np.arange(40), S.argmax(axis=1)], axis=1), axis=1)
    assert {tuple(p) for p in nearest.tolist()} <= {tuple(p) for p in pairs.tolist()}
    # the block-wise similarity gives the same answer as one block
    import ucal.active._mpps as mpps

    old, mpps._BLOCK = mpps._BLOCK, 7
    try:
        pairs2, sims2 = candidate_pairs(centers, l_max=5, delta=0.3)
    finally:
        mpps._BLOCK = old
    np.testing.assert_array_equal(pairs, pairs2)


def test_mpps_raises_recall_on_fragmented_identities():
    X, y = identities(n_ids=20, per_id=20)
    labels = fragment(y, range(4))  # 24 clusters: 4 merges allowed by 20%
    p0, r0, _ = pairwise_precision_recall_fscore(y, labels)
    oracle = RecordingOracle(y)
    model = MPPSMerger().fit(X, labels=labels, oracle=oracle)
    p1, r1, _ = pairwise_precision_recall_fscore(y, model.labels_)
    assert r1 > r0 and r1 == 1.0 and p1 == p0 == 1.0
    assert model.n_merges_ == 4 and model.n_clusters_ == 20
    assert model.n_queries_ == len(oracle.sent) == len(set(oracle.sent))
    assert model.stage_queries_ == {"mpps": model.n_queries_}


def test_merges_stop_at_max_merge_ratio_most_similar_first():
    X, y = identities(n_ids=8, per_id=20, noise=0.8)
    labels = fragment(y, range(8))  # 16 clusters, 8 true merges
    model = MPPSMerger(max_merge_ratio=0.2).fit(X, y, labels=labels)
    # merges go on until removed >= 0.2 * 16 = 3.2: four merges
    assert model.n_merges_ == 4 and model.n_clusters_ == 12
    # ... and they are the four fragment pairs with the most similar centroids
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)

    def centre(mask):
        c = Xn[mask].mean(axis=0)
        return c / np.linalg.norm(c)

    sims = [centre(labels == s) @ centre(labels == 1000 + s) for s in range(8)]
    expected = set(np.argsort(sims)[::-1][:4].tolist())
    merged = {s for s in range(8) if len(np.unique(model.labels_[y == s])) == 1}
    assert merged == expected
    assert MPPSMerger(max_merge_ratio=1.0).fit(X, y, labels=labels).n_clusters_ == 8
    assert MPPSMerger(max_merge_ratio=0.0).fit(X, y, labels=labels).n_merges_ == 0


@pytest.mark.parametrize(
    "params", [dict(cluster_inference=False), dict(confirm_size=None)], ids=["paper", "votes"]
)
def test_pairs_sent_are_cluster_medoids(params):
    # without confirmations, the first (and only) pair asked about two clusters
    # is their medoid pair
    X, y = identities(n_ids=10, per_id=20)
    labels = fragment(y, range(3))
    model = MPPSMerger(**params).fit(X, y, labels=labels)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    medoid = {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        centre = Xn[members].mean(axis=0)
        medoid[c] = members[np.argmax(Xn[members] @ centre)]
    pairs = model.queries_["pairs"]
    assert len(pairs) > 0
    for i, j in pairs.tolist():
        assert medoid[labels[i]] == i and medoid[labels[j]] == j
        assert labels[i] != labels[j]


def test_outliers_are_never_queried_and_never_become_clusters():
    X, y = identities(n_ids=10, per_id=20)
    labels = fragment(y, range(3))
    outliers = np.arange(0, len(y), 7)
    labels[outliers] = -1
    model = MPPSMerger().fit(X, y, labels=labels)
    np.testing.assert_array_equal(np.flatnonzero(model.labels_ < 0), outliers)
    assert not np.isin(model.queries_["pairs"], outliers).any()


def test_budget_asks_the_most_similar_centroid_pair_first():
    X, y = identities(n_ids=10, per_id=20)
    labels = fragment(y, range(3))
    full = MPPSMerger().fit(X, y, labels=labels)
    with pytest.warns(UserWarning, match="budget"):
        cut = MPPSMerger(max_queries=1).fit(X, y, labels=labels)
    assert cut.n_queries_ == 1
    np.testing.assert_array_equal(cut.queries_["pairs"][0], full.queries_["pairs"][0])
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    C = np.array([Xn[labels == c].mean(axis=0) for c in np.unique(labels)])
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    S = C @ C.T
    np.fill_diagonal(S, -1)
    a, b = np.unravel_index(S.argmax(), S.shape)
    i, j = cut.queries_["pairs"][0]
    assert {labels[i], labels[j]} == {np.unique(labels)[a], np.unique(labels)[b]}


def test_snps_then_mpps_nested_shares_one_memory_and_raises_fscore(tmp_path):
    X, y = identities(n_ids=20, per_id=20)
    labels = y.copy()
    for a in (0, 2, 4):  # impure clusters of 40
        labels[y == a + 1] = a
    labels = fragment(y, range(10, 14), labels)  # fragmented identities
    p0, r0, f0 = pairwise_precision_recall_fscore(y, labels)
    path = tmp_path / "answers.jsonl"
    model = MPPSMerger(
        clusterer=SNPSSplitter(
            clusterer=FixedLabels(labels), random_state=0, k_max_rule="floor", cluster_inference=False
        ),
        max_merge_ratio=0.5,
        memory_path=path,
    )
    oracle = RecordingOracle(y)
    model.fit(X, oracle=oracle)
    p1, r1, f1 = pairwise_precision_recall_fscore(y, model.labels_)
    assert f1 > f0 and p1 > p0 and r1 > r0
    inner = model.clusterer_
    assert inner.label_memory_ is model.label_memory_
    assert set(model.stage_queries_) == {"snps", "mpps"}
    assert model.stage_queries_["snps"] == inner.n_queries_ == 3
    assert model.n_queries_ == sum(model.stage_queries_.values()) == len(oracle.sent)
    assert len(model.queries_["pairs"]) == model.n_queries_
    assert (model.queries_["stage"] == "snps").sum() == 3
    assert len(LabelMemory(path)) == model.n_queries_
    # SNPS's splits are what MPPS starts from
    p_inner = pairwise_precision_recall_fscore(y, inner.labels_)[0]
    assert p_inner == 1.0


def test_repeated_rounds_never_ask_a_pair_twice_and_inference_saves_queries():
    X, y = identities(n_ids=30, per_id=40)
    labels = y.copy()
    for a in range(0, 10, 2):
        labels[y == a + 1] = a
    labels = fragment(y, range(10, 20), labels)
    totals, finals = {}, {}
    for infer in (True, False):
        memory = LabelMemory(infer=infer)
        oracle = RecordingOracle(y)
        drift = np.random.RandomState(1)
        for _ in range(4):  # as across epochs: the embeddings move a little
            Xr = X + 0.15 * drift.randn(*X.shape) / np.sqrt(X.shape[1])
            model = MPPSMerger(
                clusterer=SNPSSplitter(clusterer=FixedLabels(labels), random_state=0),
                max_merge_ratio=0.5,
            ).fit(Xr, oracle=oracle, label_memory=memory)
        assert len(oracle.sent) == len(set(oracle.sent))  # no pair twice
        totals[infer] = len(oracle.sent)
        finals[infer] = model.labels_
    assert totals[True] < totals[False]
    np.testing.assert_array_equal(finals[True], finals[False])


def test_pipeline_with_standard_scaler():
    X, y = identities(n_ids=10, per_id=20)
    labels = fragment(y, range(3))
    pipe = make_pipeline(StandardScaler(), MPPSMerger(clusterer=FixedLabels(labels)))
    predicted = pipe.fit_predict(X, y)
    assert adjusted_rand_score(predicted, y) > adjusted_rand_score(labels, y)
    assert pipe.transform(X).shape == (len(X), pipe[-1].n_clusters_)


def test_grid_search_over_delta_and_inner_eps():
    X, y = identities(n_ids=8, per_id=30, noise=0.5)
    model = MPPSMerger(
        clusterer=SNPSSplitter(clusterer=DBSCAN(eps=0.2, min_samples=3, metric="cosine")),
    )
    search = GridSearchCV(
        model,
        {"delta": [0.1, 0.3], "clusterer__clusterer__eps": [0.005, 0.2]},
        cv=2,
    ).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert np.all((scores >= 0) & (scores <= 1))
    # a tiny eps leaves almost everything un-clustered: it must lose
    assert search.best_params_["clusterer__clusterer__eps"] == 0.2
    assert search.best_estimator_.n_queries_ > 0


def test_grid_search_over_delta_and_self_paced_dbscan_eps():
    X, y = identities(n_ids=6, per_id=40, noise=0.3)
    model = MPPSMerger(clusterer=SNPSSplitter(clusterer=SelfPacedDBSCAN(k1=10), random_state=0))
    search = GridSearchCV(
        model,
        {"delta": [0.2, 0.4], "clusterer__clusterer__eps": [0.5, 0.6]},
        cv=2,
        error_score="raise",
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    fitted = search.best_estimator_
    assert isinstance(fitted.clusterer_.clusterer_, SelfPacedDBSCAN)
    assert fitted.clusterer_.clusterer_.eps == search.best_params_["clusterer__clusterer__eps"]
    assert 0 <= search.best_score_ <= 1


def test_memory_path_persists_answers_across_estimators(tmp_path):
    X, y = identities(n_ids=10, per_id=20)
    labels = fragment(y, range(3))
    path = tmp_path / "answers.jsonl"
    # the paper's MPPS (every candidate asked): a second fit finds every answer on file
    first = MPPSMerger(memory_path=path, cluster_inference=False).fit(X, y, labels=labels)
    oracle = LabelOracle(y)
    second = MPPSMerger(memory_path=path, cluster_inference=False).fit(
        X, labels=labels, oracle=oracle
    )
    assert first.n_queries_ > 0 and oracle.n_queries == 0
    assert second.n_inferred_ == first.n_queries_
    np.testing.assert_array_equal(first.labels_, second.labels_)


def test_labels_given_to_a_chain_reach_its_innermost_refiner():
    # MPPSMerger(clusterer=SNPSSplitter()) with labels: SNPS splits them, then MPPS merges
    X, y = identities(n_ids=6, per_id=20)
    labels = fragment(y, [0, 1])  # identities 0 and 1 each cut in two
    labels[y == 3] = labels[y == 2][0]  # identities 2 and 3 in one cluster
    chain = MPPSMerger(clusterer=SNPSSplitter(k_max=2, random_state=0), max_merge_ratio=0.5)
    chain.fit(X, y, labels=labels)
    assert chain.stage_queries_["snps"] > 0 and chain.stage_queries_["mpps"] > 0
    assert chain.stage_changes_ == {"snps": 1, "mpps": 2}
    assert chain.clusterer_.n_splits_ == 1
    assert adjusted_rand_score(y, chain.labels_) == pytest.approx(1.0)
    # a plain clusterer, in contrast, is replaced by the labels
    plain = MPPSMerger(clusterer=FixedLabels(np.zeros_like(y))).fit(X, y, labels=labels)
    assert plain.clusterer_ is None and plain.n_clusters_ > 1


def test_query_limit_and_seed_come_through_fit_without_changing_parameters(tmp_path):
    X, y = identities(n_ids=6, per_id=20)
    labels = fragment(y, [0, 1, 2, 3])
    chain = MPPSMerger(clusterer=SNPSSplitter(k_max=3), max_merge_ratio=0.5)
    with pytest.warns(UserWarning, match="budget"):
        limited = chain.fit(X, y, labels=labels, query_limit=2)
    assert limited.n_queries_ == 2 and chain.get_params()["max_queries"] is None
    # the seed reaches a nested SNPS whose random_state is None: same seed, same fit
    a = MPPSMerger(clusterer=SNPSSplitter(k_max=3)).fit(X, y, labels=labels, seed=5)
    b = MPPSMerger(clusterer=SNPSSplitter(k_max=3)).fit(X, y, labels=labels, seed=5)
    np.testing.assert_array_equal(a.queries_["pairs"], b.queries_["pairs"])
    assert a.clusterer.random_state is None
    with pytest.raises(ValueError, match="query_limit"):
        chain.fit(X, y, labels=labels, query_limit=-1)
    # a label memory may be given as the path of its file, as everywhere
    path = tmp_path / "answers.jsonl"
    first = MPPSMerger(cluster_inference=False).fit(X, y, labels=labels, label_memory=str(path))
    again = MPPSMerger(cluster_inference=False).fit(X, y, labels=labels, label_memory=path)
    assert first.n_queries_ > 0 and again.n_queries_ == 0
    assert again.n_inferred_ >= first.n_queries_


def test_a_cluster_of_zero_rows_leaves_no_empty_cluster_behind():
    # zero rows clustered together by the given labels: they become noise, and
    # the pairs asked are still medoids of real clusters
    X, y = identities(n_ids=4, per_id=10)
    X[:10] = 0.0
    labels = fragment(y, [1, 2])
    oracle = LabelOracle(y)
    with pytest.warns(UserWarning, match="10 all-zero row"):
        mpps = MPPSMerger(max_merge_ratio=0.5).fit(X, labels=labels, oracle=oracle)
    assert (mpps.labels_[:10] == -1).all()
    assert mpps.n_clusters_ == 3  # identities 1 and 2 merged back, 3 untouched
    pairs = mpps.queries_["pairs"]
    assert len(pairs) and (pairs >= 10).all()


def test_neighbour_pairs_are_each_images_nearest_in_another_set():
    from ucal.active._mpps import neighbour_pairs

    X, y = identities(n_ids=10, per_id=12, noise=0.9)
    labels = fragment(y, range(10))  # every identity in two halves
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    pairs, shown = neighbour_pairs(Xn, labels)
    sims = Xn @ Xn.T
    assert len(pairs) > 0
    # shown pairs cross two sets, and name the pair of sets of their candidate
    np.testing.assert_array_equal(np.sort(labels[shown], axis=1), pairs)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)  # each pair of sets once
    nearest_outside = {}
    for i in range(len(X)):
        other = np.flatnonzero(labels != labels[i])
        nearest_outside[i] = other[np.argmax(sims[i, other])]
    for i, j in shown.tolist():  # j is i's nearest image outside its own set
        assert nearest_outside[i] == j
    mutual = np.array([nearest_outside[j] == i for i, j in shown.tolist()])
    # mutual pairs first, then the others, each group by decreasing similarity
    assert mutual.any() and not (np.diff(mutual.astype(int)) > 0).any()
    s = sims[shown[:, 0], shown[:, 1]]
    for group in (mutual, ~mutual):
        assert (np.diff(s[group]) <= 1e-12).all()
    # the halves of an identity are what the neighbours find
    assert (y[shown[:, 0]] == y[shown[:, 1]]).mean() > 0.8


def test_neighbors_selection_shows_image_pairs_and_pairs_outliers():
    X, y = identities(n_ids=10, per_id=12, noise=0.9)
    labels = fragment(y, range(5))
    outliers = np.flatnonzero(y >= 8)  # two whole identities unclustered, one more alone
    labels[outliers] = -1
    lonely = np.flatnonzero(y == 7)[0]
    labels[lonely] = -1
    oracle = RecordingOracle(y)
    model = MPPSMerger(selection="neighbors", max_merge_ratio=1.0, confirm_size=None).fit(
        X, labels=labels, oracle=oracle)
    # the questions are images' nearest neighbours (outliers as sets of one), in order
    from ucal.active._mpps import neighbour_pairs

    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    sets = labels.copy()
    sets[labels < 0] = labels.max() + 1 + np.arange((labels < 0).sum())
    shown = np.sort(neighbour_pairs(Xn, sets)[1], axis=1)
    asked = np.sort(model.queries_["pairs"], axis=1)
    np.testing.assert_array_equal(asked[:10], shown[:10])
    # outliers of one identity that "same" answers join are a cluster now
    refined = model.labels_
    for s in (8, 9):
        members = refined[y == s]
        assert (members >= 0).sum() >= 2
    # the lonely outlier's nearest images are its identity's cluster: it joins it
    assert refined[lonely] >= 0
    assert refined[lonely] == refined[np.flatnonzero((y == 7) & (labels >= 0))[0]]
    assert model.n_queries_ == len(oracle.sent) == len(set(oracle.sent))
    # the clusters it was given never split, and only "same" answers joined anything
    p, r, _ = pairwise_precision_recall_fscore(y[refined >= 0], refined[refined >= 0])
    assert p == 1.0


def test_neighbors_selection_with_no_answer_leaves_outliers_alone():
    X, y = identities(n_ids=6, per_id=10)
    labels = y.copy()
    labels[::4] = -1
    from ucal.oracles import BudgetExhaustedWarning

    with pytest.warns(BudgetExhaustedWarning):
        model = MPPSMerger(selection="neighbors", max_queries=0).fit(
            X, labels=labels, oracle=LabelOracle(y))
    np.testing.assert_array_equal(model.labels_ < 0, labels < 0)


def test_neighbors_selection_as_the_paper_asks_every_image_pair_in_one_batch():
    from ucal.active._mpps import neighbour_pairs

    X, y = identities(n_ids=8, per_id=10, noise=0.9)
    labels = fragment(y, range(8))
    model = MPPSMerger(selection="neighbors", cluster_inference=False, max_merge_ratio=1.0).fit(
        X, y, labels=labels)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    shown = neighbour_pairs(Xn, labels)[1]
    np.testing.assert_array_equal(np.sort(model.queries_["pairs"], axis=1), np.sort(shown, axis=1))
    assert model.n_clusters_ == 8  # the halves of every identity are each other's neighbours


def test_neighbors_selection_leaves_all_zero_rows_out():
    from ucal.active import MPPSMerger as Merger

    X, y = identities(n_ids=6, per_id=10, noise=0.9)
    labels = fragment(y, range(6))
    labels[::9] = -1
    X[[0, 13]] = 0.0  # one an outlier already, one in a cluster
    with pytest.warns(UserWarning, match="all-zero"):
        model = Merger(selection="neighbors", max_merge_ratio=1.0).fit(X, y, labels=labels)
    assert (model.labels_[[0, 13]] == -1).all()
    assert not np.isin(model.queries_["pairs"], [0, 13]).any()
    assert (model.labels_ >= 0).sum() > (labels >= 0).sum() - 1  # outliers joined


def test_gap_then_neighbors_asks_the_gap_rule_first_then_image_neighbours():
    from ucal.active._mpps import neighbour_pairs

    X, y = identities(n_ids=8, per_id=10, noise=0.9)
    labels = fragment(y, range(7))
    labels[y == 7] = -1  # one identity left unclustered
    params = dict(cluster_inference=False, max_merge_ratio=1.0)
    gap = MPPSMerger(selection="gap", **params).fit(X, y, labels=labels)
    both = MPPSMerger(selection="gap_then_neighbors", **params).fit(X, y, labels=labels)
    # first the gap rule's questions, the same ones in the same order
    n_gap = len(gap.queries_["pairs"])
    assert n_gap > 0
    np.testing.assert_array_equal(both.queries_["pairs"][:n_gap], gap.queries_["pairs"])
    # then each image's nearest neighbour in another set, for the set pairs the
    # gap rule left out (outliers as sets of one), in neighbour_pairs's order
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    sets = labels.copy()
    sets[labels < 0] = labels.max() + 1 + np.arange((labels < 0).sum())
    near, shown = neighbour_pairs(Xn, sets)
    gap_sets = {tuple(sorted(p)) for p in sets[gap.queries_["pairs"]].tolist()}
    fresh = [tuple(sorted(s)) for p, s in zip(near.tolist(), shown.tolist())
             if tuple(p) not in gap_sets]
    assert [tuple(p) for p in both.queries_["pairs"][n_gap:].tolist()] == fresh
    # the unclustered identity: left alone by the gap rule, made clusters here (pure)
    assert (gap.labels_[y == 7] == -1).all()
    assert (both.labels_[y == 7] >= 0).all()
    p, _, _ = pairwise_precision_recall_fscore(y[both.labels_ >= 0], both.labels_[both.labels_ >= 0])
    assert p == 1.0


def test_gap_then_neighbors_at_the_defaults_counts_outliers_in_the_cap():
    X, y = identities(n_ids=10, per_id=12, noise=0.9)
    labels = fragment(y, range(10))  # 20 halves
    labels[np.flatnonzero(y >= 0)[::3]] = -1  # a third of the images are outliers
    n_clusters, n_outliers = len(np.unique(labels[labels >= 0])), (labels < 0).sum()
    gap = MPPSMerger(selection="gap").fit(X, y, labels=labels)
    both = MPPSMerger(selection="gap_then_neighbors").fit(X, y, labels=labels)
    # the gap rule alone stops at 20 % of the clusters; here the outliers join the base
    assert gap.n_merges_ <= 0.2 * n_clusters < both.n_merges_ <= 0.2 * (n_clusters + n_outliers)
    # its first questions are still the gap rule's, and every merge is right
    np.testing.assert_array_equal(both.queries_["pairs"][:2], gap.queries_["pairs"][:2])
    for model in (gap, both):
        kept = model.labels_ >= 0
        assert pairwise_precision_recall_fscore(y[kept], model.labels_[kept])[0] == 1.0
