"""A team of annotators as one oracle: who answers which pair, and the answer used."""

import logging
import numbers

import numpy as np
from sklearn.utils import check_random_state

from ._agreement import TIEBREAK, annotator_agreement
from ._arguments import as_label_memory
from ._memory import LabelMemory
from ._protocol import OracleError, check_pairs, query_oracle

__all__ = ["AnnotatorTeam", "assign_pairs"]

logger = logging.getLogger(__name__)

_TIE_BREAKERS = ("annotator", "reviewer")
_ROUTINGS = ("uniform", "reliability")
# The name an AnnotatorTeam's reviewer's answers are recorded under.
_REVIEWER = "reviewer"
# Shared pairs each person needs before their estimated error rate steers the work.
MIN_SHARED_PAIRS = 30
# Error rates below this are noise: a floor for the team's median in the shares.
_MIN_ERROR_RATE = 0.01


def check_team(annotators, double_fraction):
    """Validate a team's names and its double-annotated fraction; return the names as a list."""
    names = list(annotators)
    if not names:
        raise ValueError("A team needs at least one annotator.")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Annotator names must be non-empty strings, got {name!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Annotator names must be unique, got {names}.")
    if isinstance(double_fraction, bool) or not isinstance(double_fraction, numbers.Real) or not (
        0.0 <= double_fraction <= 1.0
    ):
        raise ValueError(f"double_fraction must be a number in [0, 1], got {double_fraction!r}.")
    if double_fraction > 0 and len(names) < 2:
        raise ValueError("double_fraction > 0 needs at least two annotators.")
    return names


def assign_pairs(n_pairs, annotators, *, double_fraction=0.0, random_state=None, load=None,
                 exclude=None, error_rates=None):
    """Who answers which pair: one annotator each, two for a fraction of them.

    Every pair goes to the annotator with the fewest answers assigned so
    far (ties broken at random), and ``round(double_fraction * n_pairs)``
    pairs get a second annotator, the least loaded of the others; those
    pairs are drawn at random. Nobody gets a pair twice, nor a pair they
    are excluded from.

    With ``error_rates``, the work follows reliability: a person whose
    estimated error rate ``e`` is above the team's median ``m`` gets
    ``(m / e) ** 2`` of the others' share of the answers (load is counted
    against that share; a person twice as error-prone as the median does a
    quarter of the work), and second opinions go to the pairs of the most
    error-prone people first. Only who is worse than the rest loses work:
    small differences between the others are mostly noise of the
    estimates.

    Parameters
    ----------
    n_pairs : int
        Number of pairs to assign.
    annotators : sequence of str
        The team.
    double_fraction : float, default=0.0
        Share of pairs put to two annotators (their agreement is measured
        on these).
    random_state : int, RandomState instance or None, default=None
        Draws the double-annotated pairs and breaks ties of load.
    load : dict of str to int, default=None
        Answers assigned to each annotator before; updated in place, so
        that the work stays balanced over batches.
    exclude : sequence of set of str, default=None
        Per pair, annotators who must not get it (they answered it already).
    error_rates : dict of str to float, default=None
        Each annotator's estimated error rate (see
        :func:`annotator_agreement`); None shares the work evenly.

    Returns
    -------
    assignment : list of tuple of str
        Per pair, its annotators (one or two; none when everybody is excluded).

    Examples
    --------
    >>> from ucal.oracles import assign_pairs
    >>> assign_pairs(4, ["ann", "bob"], double_fraction=0.5, random_state=0)
    [('bob', 'ann'), ('ann',), ('ann', 'bob'), ('bob',)]
    """
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, (int, np.integer)) or n_pairs < 0:
        raise ValueError(f"n_pairs must be an integer >= 0, got {n_pairs!r}.")
    names = check_team(annotators, double_fraction)
    rng = check_random_state(random_state)
    load = {} if load is None else load
    for name in names:
        load.setdefault(name, 0)
    n_double = int(round(double_fraction * n_pairs)) if len(names) > 1 else 0
    share = {name: 1.0 for name in names}
    if error_rates is not None:
        median = _median_rate(error_rates)
        share = {name: min(median / max(error_rates[name], 1e-12), 1.0) ** 2 for name in names}

    def least_loaded(k, taken=()):
        banned = set(exclude[k]) if exclude is not None else set()
        free = [name for name in names if name not in banned and name not in taken]
        if not free:
            return None
        tie = rng.permutation(len(free))
        return free[min(range(len(free)),
                        key=lambda t: ((load[free[t]] + 1) / share[free[t]], tie[t]))]

    first = []
    for k in range(n_pairs):
        name = least_loaded(k)
        if name is not None:
            load[name] += 1
        first.append(name)
    candidates = np.array([k for k in range(n_pairs) if first[k] is not None], dtype=np.int64)
    order = rng.permutation(candidates)
    if error_rates is not None and len(order):
        # the most error-prone person's pairs first, at random among them
        score = np.array([error_rates[first[k]] for k in order], dtype=float)
        order = order[np.argsort(-score, kind="stable")]
    assignment = [() if name is None else (name,) for name in first]
    n_done = 0
    for k in order.tolist():
        if n_done == n_double:
            break
        second = least_loaded(k, taken=(first[k],))
        if second is not None:
            load[second] += 1
            assignment[k] = (first[k], second)
            n_done += 1
    return assignment


def answered_by(memory, pairs):
    """Per pair (``i < j``), the annotators who answered it before (any answer, "not sure" too)."""
    wanted = {(i, j): set() for i, j in np.asarray(pairs).tolist()}
    for record in memory:
        who = wanted.get((record.i, record.j))
        if who is not None and record.annotator is not None:
            who.add(record.annotator)
    return [wanted[(i, j)] for i, j in np.asarray(pairs).tolist()]


def _median_rate(error_rates):
    """The team's median error rate, floored: below the floor, differences are noise."""
    return max(float(np.median(list(error_rates.values()))), _MIN_ERROR_RATE)


def error_rates_of(memory, names, min_shared=MIN_SHARED_PAIRS):
    """Each person's estimated error rate once everyone shares ``min_shared`` pairs; else None."""
    found = annotator_agreement(memory)["annotators"]
    for name in names:
        person = found.get(name)
        if person is None or person["n_common"] < min_shared or np.isnan(person["error_rate"]):
            return None
    return {name: found[name]["error_rate"] for name in names}


class AnnotatorTeam:
    """Several annotators answering as one oracle, every answer kept with its author.

    Each batch is shared out by :func:`assign_pairs`: one annotator per
    pair, two for a ``double_fraction`` of them. Every member's answers
    are recorded in ``label_memory`` under their name (``source="team"``),
    and the answer returned is the memory's: with
    ``resolution="majority"``, agreeing votes answer, and a tie (the two
    annotators of a pair disagree) goes to the tie breaker. The
    agreement of the members (:func:`~ucal.oracles.annotator_agreement`)
    is measured on the double-annotated pairs.

    The members are oracles (``oracle(pairs) -> answers``): simulated
    annotators such as :class:`NoisyOracle` for a study, or anything that
    asks real people. :class:`~ucal.annotation.TeamOracle` is the same
    team on the annotation page.

    Parameters
    ----------
    members : dict of str to callable
        Annotator name -> their oracle.
    label_memory : LabelMemory, str, path-like or None, default=None
        Where every member's answer is recorded. Its ``resolution`` is the
        rule that turns several answers into one; a path opens a memory
        with ``resolution="majority"``; None keeps an in-memory one.
        Give the refiner the same memory.
    double_fraction : float, default=0.2
        Share of each batch's pairs answered by two annotators.
    reviewer : callable or None, default=None
        An oracle that settles ties (its answers are recorded as
        ``source="correction"``, which overrides the votes).
    tie_breaker : {"annotator", "reviewer"}, default="annotator"
        Who settles a tie first: ``"annotator"`` puts the pair to one
        more member who has not answered it (the reviewer, if any, when
        nobody is left); ``"reviewer"`` puts it to the reviewer. A tie
        nobody settles is answered ``-1`` and waits in the memory's
        :meth:`~LabelMemory.conflicts` for the review page.
    routing : {"uniform", "reliability"}, default="uniform"
        How the work is shared: evenly, double-annotated pairs drawn at
        random; or, once every person shares 30 double-annotated pairs
        with the others and the team has three people or more, by
        reliability: people whose estimated error rate
        (:func:`annotator_agreement`) is above the team's median get less
        of the work (see :func:`assign_pairs`), and second opinions go to
        the most error-prone people's pairs first (evenly until then).
    random_state : int, RandomState instance or None, default=None
        Draws the double-annotated pairs and balances the load.

    Attributes
    ----------
    n_queries : int
        Pairs asked (each pair once, however many annotators answered it).
    n_answers : int
        Answers given, all members together (a double-annotated pair
        counts two, a tie broken by a third member three): the team's
        annotation cost.
    n_answers_by : dict of str to int
        Answers given per member (the reviewer as ``"reviewer"``).
    label_memory : LabelMemory
        The memory answers are recorded in.

    See Also
    --------
    assign_pairs : How pairs are shared out.
    annotator_agreement : Cohen's kappa between the members.

    Examples
    --------
    >>> from ucal.oracles import AnnotatorTeam, LabelOracle, annotator_agreement
    >>> truth = LabelOracle([0, 0, 1, 1, 2, 2])
    >>> team = AnnotatorTeam({"ann": truth, "bob": truth}, double_fraction=1.0, random_state=0)
    >>> team([[0, 1], [1, 2], [4, 5]]).tolist()
    [1, 0, 1]
    >>> team.n_queries, team.n_answers
    (3, 6)
    >>> annotator_agreement(team.label_memory)["overall"]["agreement"]
    1.0
    """

    def __init__(self, members, *, label_memory=None, double_fraction=0.2, reviewer=None,
                 tie_breaker="annotator", routing="uniform", random_state=None):
        if not isinstance(members, dict):
            raise TypeError(
                f"members must be a dict of annotator name -> oracle, got {type(members).__name__}."
            )
        self.names = check_team(members, double_fraction)
        for name, oracle in members.items():
            if not callable(oracle):
                raise TypeError(f"The oracle of annotator {name!r} is not callable: {oracle!r}.")
        if reviewer is not None and not callable(reviewer):
            raise TypeError(f"reviewer must be an oracle (callable) or None, got {reviewer!r}.")
        if reviewer is not None and _REVIEWER in members:
            raise ValueError(f"A member cannot be called {_REVIEWER!r}: the reviewer's answers "
                             "are recorded under that name.")
        if tie_breaker not in _TIE_BREAKERS:
            raise ValueError(f"tie_breaker must be one of {_TIE_BREAKERS}, got {tie_breaker!r}.")
        check_routing(routing)
        self.members = dict(members)
        self.routing = routing
        self.double_fraction = double_fraction
        self.reviewer = reviewer
        self.tie_breaker = tie_breaker
        self.random_state = random_state
        self.label_memory = team_memory(label_memory)
        self.n_queries = 0
        self.n_answers = 0
        self.n_answers_by = {}
        self._rng = check_random_state(random_state)
        self._load = {}

    def set_context(self, labels):
        """Pass the groups shown as context on to every member that takes them.

        Parameters
        ----------
        labels : array-like of int of shape (n_samples,) or None
            The groups (see the oracle protocol in :mod:`ucal.oracles`).
        """
        for oracle in (*self.members.values(), self.reviewer):
            if callable(getattr(oracle, "set_context", None)):
                oracle.set_context(labels)

    def __call__(self, pairs):
        """Share out a batch, record every answer, return the answers used.

        Parameters
        ----------
        pairs : array-like of shape (m, 2)
            Sample indices.

        Returns
        -------
        answers : ndarray of shape (m,), dtype int8
            1 same, 0 different, -1 not sure or an unsettled tie.

        Raises
        ------
        OracleError
            If a member's oracle fails; the answers received before are recorded.
        """
        pairs = np.sort(check_pairs(pairs), axis=1)
        memory = self.label_memory
        self.n_queries += len(pairs)
        error_rates = None
        if self.routing == "reliability":
            error_rates = error_rates_of(memory, self.names)
        assignment = assign_pairs(
            len(pairs), self.names, double_fraction=self.double_fraction, random_state=self._rng,
            load=self._load, error_rates=error_rates, exclude=answered_by(memory, pairs),
        )
        self._ask_members(pairs, assignment)
        tied = np.flatnonzero(memory._tied_mask(pairs) & (memory.lookup(pairs) < 0))
        if len(tied) and self.tie_breaker == "annotator":
            extra = assign_pairs(len(tied), self.names, random_state=self._rng, load=self._load,
                                 exclude=answered_by(memory, pairs[tied]))
            self._ask_members(pairs[tied], extra, source=TIEBREAK)
            tied = tied[memory.lookup(pairs[tied]) < 0]
        if len(tied) and self.reviewer is not None:
            self._ask(self.reviewer, _REVIEWER, pairs[tied], source="correction")
        return memory.lookup(pairs)

    def _ask_members(self, pairs, assignment, source="team"):
        for name in self.names:
            mine = np.array([k for k, who in enumerate(assignment) if name in who], dtype=np.int64)
            if len(mine):
                self._ask(self.members[name], name, pairs[mine], source=source)

    def _ask(self, oracle, name, pairs, *, source):
        codes, problem, exc = query_oracle(oracle, pairs)
        if codes is not None:
            valid = codes >= -1
            self.label_memory.record(pairs[valid], codes[valid], source=source, annotator=name)
            self.n_answers += int(valid.sum())
            self.n_answers_by[name] = self.n_answers_by.get(name, 0) + int(valid.sum())
        if problem is not None:
            raise OracleError(f"Annotator {name!r}: {problem}.", memory=self.label_memory) from exc

    def __repr__(self):
        return (
            f"AnnotatorTeam(members={self.names}, double_fraction={self.double_fraction}, "
            f"n_answers={self.n_answers})"
        )


def check_routing(routing):
    if routing not in _ROUTINGS:
        raise ValueError(f"routing must be one of {_ROUTINGS}, got {routing!r}.")


def team_memory(label_memory, resolution="majority"):
    """The label memory of a team: ``label_memory`` opened with ``resolution``, checked."""
    if label_memory is None:
        return LabelMemory(resolution=resolution)
    if not isinstance(label_memory, LabelMemory) and not hasattr(label_memory, "lookup"):
        return LabelMemory(label_memory, resolution=resolution)
    memory = as_label_memory(label_memory)
    if getattr(memory, "resolution", resolution) != resolution:
        raise ValueError(
            f"The team's label memory resolves answers by {memory.resolution!r}, not by "
            f"{resolution!r}: open it as LabelMemory(path, resolution={resolution!r})."
        )
    return memory
