"""Pair supervision: the answered pairs as a loss term (PairSupervision, pair_weight)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from ucal.reid import PairSupervision, UCALReID  # noqa: E402
from ucal.reid._memory import FeatureMemory  # noqa: E402


def _unit(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def _memory(n=8, d=6, seed=0):
    return FeatureMemory(_unit(n, d, seed), momentum=0.2)


def test_every_answer_trains_both_of_its_images():
    pairs = np.array([[0, 3], [3, 5], [1, 1], [2, 9], [4, 6]])
    same = np.array([True, False, True, True, False])
    sup = PairSupervision(pairs, same, 8, _memory().features.numpy(), exclude=[6])
    # (1, 1) is no pair, 9 is outside the data, 6 is held out
    assert len(sup) == 2
    rows, partners, answers = sup.batch_pairs([3, 7, 0])
    got = sorted(zip(rows.tolist(), partners.tolist(), answers.tolist()))
    assert got == [(0, 0, True), (0, 5, False), (2, 3, True)]
    rows, partners, answers = sup.batch_pairs([7, 4, 6])
    assert len(rows) == len(partners) == len(answers) == 0


def test_the_boundary_is_the_answers_logistic_fit_and_the_loss_its_cross_entropy():
    from sklearn.linear_model import LogisticRegression

    memory = _memory(12, 8, seed=2)
    f = memory.features.numpy().astype(np.float64)
    rng = np.random.RandomState(0)
    pairs = np.array([[i, j] for i in range(12) for j in range(i + 1, 12)])
    sims = np.einsum("ij,ij->i", f[pairs[:, 0]], f[pairs[:, 1]])
    same = sims + 0.3 * rng.randn(len(sims)) > 0.2  # answers that follow the features
    sup = PairSupervision(pairs, same, 12, f, temperature=0.05)
    fit = LogisticRegression(C=1.0).fit(sims[:, None], same)
    assert sup.active
    assert sup.slope == pytest.approx(np.clip(fit.coef_[0, 0], 1, 20))
    assert sup.boundary == pytest.approx(-fit.intercept_[0] / fit.coef_[0, 0])
    feats = _unit(2, 8, seed=1)
    total, n_terms = sup.loss(feats, [0, 5], memory)
    rows, partners, answers = sup.batch_pairs([0, 5])
    s = (feats[rows] * memory.features[partners]).sum(1)
    p = torch.sigmoid(sup.slope * (s - sup.boundary))
    target = torch.as_tensor(answers, dtype=torch.float32)
    manual = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).sum()
    assert n_terms == len(rows) == 22  # images 0 and 5 each meet their 11 partners
    torch.testing.assert_close(total, manual)


def test_a_step_on_the_term_pulls_same_and_pushes_different():
    memory = _memory(6, 8, seed=3)
    f = memory.features.numpy()
    for answer, sign in ((True, 1), (False, -1)):
        sup = PairSupervision([[0, 4], [1, 2]], [answer, not answer], 6, f)
        raw = memory.features[[0]].clone().requires_grad_(True)
        before = float(F.normalize(raw.detach(), dim=1)[0] @ memory.features[4])
        sup.slope, sup.boundary = 10.0, before  # the pair on the boundary: the step alone tested
        optim = torch.optim.SGD([raw], lr=0.05)
        for _ in range(5):
            loss, _ = sup.loss(F.normalize(raw, dim=1), [0], memory)
            optim.zero_grad()
            loss.backward()
            optim.step()
        after = float(F.normalize(raw.detach(), dim=1)[0] @ memory.features[4])
        assert sign * (after - before) > 0.01, (answer, before, after)


def test_no_boundary_and_no_term_until_both_answers_are_known():
    memory = _memory()
    f = memory.features.numpy()
    only_same = PairSupervision([[0, 1], [2, 3]], [True, True], 8, f)
    assert not only_same.active
    feats = _unit(2, 6).requires_grad_(True)
    total, n_terms = only_same.loss(feats, [0, 1], memory)
    assert n_terms == 0 and float(total.detach()) == 0.0
    total.backward()  # no error: the step's loss may always be summed with it
    both = PairSupervision([[0, 1], [2, 3]], [True, False], 8, f)
    total, n_terms = both.loss(feats, [4, 5], memory)  # no answer in this batch
    assert n_terms == 0 and float(total.detach()) == 0.0


def test_trim_leaves_out_the_answers_the_features_contradict_most():
    from sklearn.linear_model import LogisticRegression

    memory = _memory(16, 8, seed=4)
    f = memory.features.numpy().astype(np.float64)
    pairs = np.array([[i, j] for i in range(16) for j in range(i + 1, 16)])
    sims = np.einsum("ij,ij->i", f[pairs[:, 0]], f[pairs[:, 1]])
    truth = sims > np.median(sims)  # 60 pairs of each kind
    wrong = np.concatenate([np.argsort(-sims)[:2], np.argsort(sims)[:2]])  # the surest pairs
    same = truth.copy()
    same[wrong] = ~same[wrong]  # four answers given the wrong way round, two of each kind
    sup = PairSupervision(pairs, same, 16, f, trim=0.04)  # int(0.04 * 60) = 2 of each kind
    assert sup.n_trimmed == 4 and len(sup) == len(pairs) - 4
    kept = np.setdiff1d(np.arange(len(pairs)), wrong)
    rows, partners, answers = sup.batch_pairs(np.arange(16))
    seen = {tuple(sorted(p)) for p in zip(rows.tolist(), partners.tolist())}
    assert seen == {tuple(p) for p in pairs[kept].tolist()}  # exactly the flipped answers sit out
    position = {tuple(p): k for k, p in enumerate(pairs.tolist())}
    got = [position[tuple(sorted(p))] for p in zip(rows.tolist(), partners.tolist())]
    np.testing.assert_array_equal(answers, truth[got])
    fit = LogisticRegression(C=1.0).fit(sims[kept, None], truth[kept])
    assert sup.boundary == pytest.approx(-fit.intercept_[0] / fit.coef_[0, 0])
    untrimmed = PairSupervision(pairs, same, 16, f)
    assert untrimmed.n_trimmed == 0 and len(untrimmed) == len(pairs)
    assert sup.slope > untrimmed.slope  # the clean answers draw a sharper boundary


def test_trim_works_per_kind_and_never_empties_one():
    # Mostly "same" answers: ranked together, the few "different" ones would all
    # go and the term would switch off; per kind, 5 % of each goes, one at least stays.
    memory = _memory(40, 8, seed=5)
    f = memory.features.numpy().astype(np.float64)
    rng = np.random.RandomState(0)
    pairs = np.array([[i, j] for i in range(40) for j in range(i + 1, 40)])[rng.permutation(780)[:100]]
    sims = np.einsum("ij,ij->i", f[pairs[:, 0]], f[pairs[:, 1]])
    same = np.ones(100, dtype=bool)
    same[np.argsort(sims)[:4]] = False  # 4 "different" answers, the least similar pairs
    sup = PairSupervision(pairs, same, 40, f, trim=0.3)
    assert sup.active
    assert sup.n_trimmed == int(0.3 * 96) + 1  # 28 "same" and 1 of the 4 "different"
    _, _, answers = sup.batch_pairs(np.arange(40))
    assert (~answers).sum() == 2 * 3  # both directions of the 3 "different" answers kept


def _fit(data, **params):
    defaults = dict(backbone="tiny", pretrained=False, image_size=(32, 16), epochs=2,
                    warmup_epochs=0, batch_size=16, iters_per_epoch=3, validation_size=0,
                    inference_batch_size=64, random_state=0)
    return UCALReID(**{**defaults, **params}).fit(data.train, data.train.pids)


def test_pair_weight_changes_training_only_where_there_are_answers(data):
    off = _fit(data, pair_weight=0.0).transform(data.query)
    on = _fit(data).transform(data.query)  # the default weighs the answers in
    assert not np.allclose(off, on)
    # the Baseline asks nothing: the pair term has nothing to learn from
    base = _fit(data, refiner="passthrough", pair_weight=0.0).transform(data.query)
    base_pairs = _fit(data, refiner="passthrough", pair_weight=1.0).transform(data.query)
    np.testing.assert_array_equal(base, base_pairs)


def test_validation_answers_never_reach_the_pair_term(data, monkeypatch):
    from ucal.reid import _loop

    seen = []
    original = _loop.PairSupervision

    def spy(pairs, same, n_samples, features, temperature=0.05, exclude=None, **kwargs):
        sup = original(pairs, same, n_samples, features, temperature, exclude, **kwargs)
        seen.append((np.asarray(pairs), np.asarray(exclude), sup))
        return sup

    monkeypatch.setattr(_loop, "PairSupervision", spy)
    model = _fit(data, pair_weight=1.0, validation_size=4)
    held, _ = model.validation_memory_.to_arrays()
    assert len(held) and seen
    held_images = np.unique(held)
    for pairs, exclude, sup in seen:
        np.testing.assert_array_equal(np.sort(exclude), held_images)
        # no validation pair among the training answers, and no term about a held-out image
        assert not {tuple(p) for p in held.tolist()} & {tuple(p) for p in pairs.tolist()}
        rows, partners, _ = sup.batch_pairs(np.arange(len(data.train)))
        assert not np.isin(partners, held_images).any()
        assert not np.isin(np.arange(len(data.train))[rows], held_images).any()


def test_resume_with_the_pair_term_is_the_same_run(data, tmp_path):
    y = data.train.pids
    run = str(tmp_path / "run")
    straight = _fit(data, epochs=3, pair_weight=0.5)
    _fit(data, epochs=2, pair_weight=0.5, checkpoint_dir=run)
    resumed = UCALReID(backbone="tiny", pretrained=False, image_size=(32, 16), epochs=3,
                       warmup_epochs=0, batch_size=16, iters_per_epoch=3, validation_size=0,
                       inference_batch_size=64, random_state=0, pair_weight=0.5,
                       checkpoint_dir=run).fit(data.train, y, resume=True)
    np.testing.assert_allclose(resumed.transform(data.query), straight.transform(data.query),
                               atol=1e-5)


def test_paper_preset_keeps_the_pair_term_off():
    assert UCALReID.from_preset("paper").pair_weight == 0.0


def test_pair_trim_reaches_the_term_and_is_bounded(data, monkeypatch):
    from sklearn.utils._param_validation import InvalidParameterError

    from ucal.reid import _loop

    trims = []
    original = _loop.PairSupervision

    def spy(*args, trim=0.0, **kwargs):
        trims.append(trim)
        return original(*args, trim=trim, **kwargs)

    monkeypatch.setattr(_loop, "PairSupervision", spy)
    _fit(data, pair_trim=0.2, epochs=3)
    assert trims and all(t == 0.2 for t in trims)
    with pytest.raises(InvalidParameterError, match="pair_trim"):
        _fit(data, pair_trim=0.5)


def test_negative_pair_weight_is_refused(data):
    from sklearn.utils._param_validation import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="pair_weight"):
        _fit(data, pair_weight=-1.0)
