"""A team answers the oracle's questions on the annotation page, each on their own link."""

import logging
import math
import threading
import webbrowser

import numpy as np
from sklearn.utils import check_random_state

from ..oracles._agreement import TIEBREAK, annotator_agreement
from ..oracles._protocol import check_person
from ..oracles._team import (
    _TIE_BREAKERS,
    answered_by,
    assign_pairs,
    check_routing,
    check_team,
    error_rates_of,
    team_memory,
)
from ._controller import (
    ANSWER_CODES,
    AnnotationController,
    RequestError,
    require_choice,
    require_int,
)
from ._questions import (
    answer_unknown,
    check_context,
    check_person_options,
    oracle_state,
    pair_sides,
    read_seconds,
    write_answer,
)
from ._review import _Review
from ._server import AnnotationServer, ImageStore, _Closable, show_url

__all__ = ["TeamOracle"]

logger = logging.getLogger(__name__)


class _TeamBatch:
    """The pairs of one oracle call: who answers each, their answers, their undo stacks."""

    def __init__(self, number, first_id, pairs, sides, assigned, excluded):
        self.number = number
        self.first_id = first_id
        self.pairs = pairs
        self.sides = sides
        self.assigned = [list(who) for who in assigned]  # grows when a tie goes to one more
        self.excluded = excluded  # per pair: who answered it before this batch
        self.tiebreaks = set()  # (position, annotator) asked because two people disagreed
        self.answers = {}  # (position, annotator) -> "same" | "different" | "unsure"
        self.history = {}  # annotator -> [(position, previous answer)]
        self.outcome = None

    def __len__(self):
        return len(self.pairs)

    def answered(self, k):
        return all((k, name) in self.answers for name in self.assigned[k])


class TeamOracle(_Closable, AnnotationController):
    """An oracle answered by a team on the annotation page, each person on their own link.

    Calling the oracle with a batch of pairs shares it out
    (:func:`~ucal.oracles.assign_pairs`): every pair goes to one
    annotator, a ``double_fraction`` of them to two, the work balanced
    over batches. Each person opens their own address (:attr:`urls`, each
    with its own secret token: the page cannot answer as someone else) and
    sees only the pairs given to them, never a pair they answered before.
    Every answer is written to ``label_memory`` the moment it arrives,
    with the person's name and the seconds it took. The batch returns
    once every pair is settled, with the answer the memory's resolution
    rule gives (``"majority"``: agreeing answers; a tie goes to the tie
    breaker).

    The reviewer (``reviewer``, their own link) sees the review page with
    the disagreements and contradictions of the memory first, ties
    first; one click records the reviewer's answer, which overrides the
    votes. The agreement of the team (Cohen's kappa per pair of people,
    per person and overall, on the pairs two people answered) is on every
    page, and :meth:`agreement` returns it.

    Parameters
    ----------
    images : ReIDSplit, list of path, or ndarray of shape (n_samples, height, width, 3)
        The samples the pairs' indices refer to (see :class:`WebOracle`).
    annotators : sequence of str
        The team's names, each given a link of their own.
    reviewer : str or None, default=None
        The name of the person who settles disagreements on the review
        page (a link of their own); None: no reviewer.
    label_memory : LabelMemory, str, path-like or None, default=None
        Where every answer is recorded (append-only, durable). A path opens
        a memory with ``resolution="majority"``; a :class:`LabelMemory`
        must have been opened so. None keeps an in-memory one. Give the
        refiner the same memory object.
    double_fraction : float, default=0.2
        Share of each batch's pairs put to two annotators.
    tie_breaker : {"annotator", "reviewer"}, default="annotator"
        Who settles a tie (two people disagreeing): ``"annotator"`` puts
        the pair to one more annotator who has not answered it, and to the
        reviewer when nobody is left; ``"reviewer"`` waits for the reviewer.
        A tie nobody can settle is returned ``-1`` (it stays in the
        memory's conflicts for the review page).
    host : str, default="127.0.0.1"
        Address to listen on; another than loopback warns.
    port : int, default=0
        Port to listen on; 0 picks a free one.
    open_browser : bool, default=False
        Open the overview page in the default browser.
    n_context : int, default=4
        Other images of each side's group shown next to the pair.
    timeout : float or None, default=None
        Seconds to wait for a batch; then ``TimeoutError`` (answers given
        so far stay recorded).
    routing : {"uniform", "reliability"}, default="uniform"
        Share the work evenly, or by each person's estimated error rate
        once it is measured, second opinions going to the error-prone
        people's pairs first (see :class:`~ucal.oracles.AnnotatorTeam`).
    random_state : int, RandomState instance or None, default=None
        Draws the double-annotated pairs and breaks ties of load.
    verbose : int, default=1
        1 logs each batch; every person's address goes to the terminal.

    Attributes
    ----------
    url : str
        The overview page (progress and agreement; nobody answers there).
    urls : dict of str to str
        Each annotator's (and the reviewer's) page, with their own token.
    n_samples : int
        Number of images.
    n_queries : int
        Pairs asked so far (each pair once).
    n_answers : int
        Answers given by the team so far (a double-annotated pair counts
        two): the team's annotation cost.
    n_batches : int
        Batches returned so far.
    label_memory : LabelMemory
        The memory every answer is recorded in.

    See Also
    --------
    WebOracle : The same page for one person.
    ucal.oracles.AnnotatorTeam : The same team rules with oracles as members (simulations).
    ucal.oracles.annotator_agreement : The agreement figures.

    Notes
    -----
    A request with one person's token is refused (403) on the others'
    actions: annotators cannot record reviews, the reviewer does not
    answer batches, and nobody answers a pair given to someone else; the
    overview's token answers nothing.

    Examples
    --------
    >>> import numpy as np
    >>> from ucal.annotation import TeamOracle
    >>> images = np.zeros((6, 16, 8, 3), dtype=np.uint8)
    >>> with TeamOracle(images, ["ann", "bob"], reviewer="rev", verbose=0) as oracle:
    ...     sorted(oracle.urls), oracle.label_memory.resolution
    (['ann', 'bob', 'rev'], 'majority')
    """

    def __init__(self, images, annotators, *, reviewer=None, label_memory=None,
                 double_fraction=0.2, tie_breaker="annotator", host="127.0.0.1", port=0,
                 open_browser=False, n_context=4, timeout=None, routing="uniform",
                 random_state=None, verbose=1):
        self.annotators = check_team(annotators, double_fraction)
        check_person(reviewer, "reviewer")
        if reviewer in self.annotators:
            raise ValueError(f"The reviewer {reviewer!r} cannot also be an annotator.")
        if tie_breaker not in _TIE_BREAKERS:
            raise ValueError(f"tie_breaker must be one of {_TIE_BREAKERS}, got {tie_breaker!r}.")
        if tie_breaker == "reviewer" and reviewer is None:
            raise ValueError('tie_breaker="reviewer" needs a reviewer.')
        check_person_options(n_context, timeout)
        check_routing(routing)
        self.reviewer = reviewer
        self.double_fraction = double_fraction
        self.routing = routing
        self.tie_breaker = tie_breaker
        self.n_context = int(n_context)
        self.timeout = timeout
        self.random_state = random_state
        self.verbose = verbose
        self.label_memory = team_memory(label_memory)
        self._images = ImageStore(images)
        self.n_samples = len(self._images)
        self.n_queries = 0
        self.n_answers = 0
        self.n_batches = 0
        self._rng = check_random_state(random_state)
        self._load = {}
        self._cond = threading.Condition()
        self._batch = None
        self._last_batch = None
        self._next_pair_id = 0
        self._n_started = 0
        self._context = None
        self._version = 0
        self._closed = False
        self._review = None
        self._summary = None  # (len(memory), agreement, answers per person)
        if reviewer is not None:
            self._review = _Review(self.label_memory, self._images, reviewer=reviewer)
        users = self.annotators + ([reviewer] if reviewer is not None else [])
        self._server = AnnotationServer(self, self._images, host=host, port=port, users=users)
        self.url = self._server.url
        self.urls = self._server.urls
        if verbose:
            for name, url in self.urls.items():
                role = "reviewer" if name == reviewer else "annotator"
                show_url(f"Annotation page of {role} {name!r}: open", url, log=logger)
        if open_browser:
            webbrowser.open(self.url)

    # -- the oracle protocol ---------------------------------------------

    def set_context(self, labels):
        """Set the groups shown as context beside the next batches.

        Parameters
        ----------
        labels : array-like of int of shape (n_samples,) or None
            As :meth:`WebOracle.set_context`: the samples sharing a queried
            sample's value are its group, ``-1`` none; None removes it.
        """
        self._context = check_context(labels, self.n_samples)

    def __call__(self, pairs):
        """Share a batch out to the team; block until every pair is settled.

        Parameters
        ----------
        pairs : array-like of shape (m, 2)
            Sample indices into ``images``.

        Returns
        -------
        answers : ndarray of shape (m,), dtype int8
            1 same person, 0 different, -1 not sure or an unsettled tie.

        Raises
        ------
        TimeoutError
            If ``timeout`` passed first (``answers`` attribute: what is settled).
        RuntimeError
            If the oracle was closed, or another batch is being asked.
        """
        if self._closed:
            raise RuntimeError("This TeamOracle is closed; create a new one.")
        return answer_unknown(pairs, self.n_samples, self.label_memory, self._ask)

    def agreement(self):
        """The team's agreement so far.

        Returns
        -------
        agreement : dict
            :func:`~ucal.oracles.annotator_agreement` of the memory: per
            two people, per person (with the estimated error rate) and
            overall.
        """
        return annotator_agreement(self.label_memory)

    def _ask(self, pairs):
        pairs = np.sort(pairs, axis=1)
        sides = pair_sides(pairs, self._images, self._context, self.n_context)
        answered = answered_by(self.label_memory, pairs)
        error_rates = None
        if self.routing == "reliability":
            error_rates = error_rates_of(self.label_memory, self.annotators)
        with self._cond:
            if self._batch is not None:
                raise RuntimeError(
                    "This TeamOracle is already waiting for a batch; it asks one at a time."
                )
            assigned = assign_pairs(
                len(pairs), self.annotators, double_fraction=self.double_fraction,
                random_state=self._rng, load=self._load, exclude=answered,
                error_rates=error_rates,
            )
            self._n_started += 1
            batch = _TeamBatch(self._n_started, self._next_pair_id, pairs, sides, assigned,
                               answered)
            self._next_pair_id += len(pairs)
            self.n_queries += len(pairs)
            self._batch = batch
            self._changed()
        if self.verbose:
            shares = {name: sum(name in who for who in assigned) for name in self.annotators}
            logger.info("Batch %d: %d pairs for the team %s.", batch.number, len(pairs), shares)
        outcome = "interrupted"
        with self._cond:
            try:
                self._cond.wait_for(lambda: self._settled(batch) or self._closed, timeout=self.timeout)
                if self._settled(batch):
                    outcome = "answered"
                else:
                    outcome = "closed" if self._closed else "timed out"
            finally:  # the answers read and the batch closed at once: no answer in between
                codes = self.label_memory.lookup(pairs)
                batch.outcome = outcome
                self._batch = None
                self._last_batch = batch
                if outcome == "answered":
                    self.n_batches += 1
                self._changed()
        if outcome == "closed":
            raise RuntimeError(f"The TeamOracle was closed during batch {batch.number}.")
        if outcome == "timed out":
            error = TimeoutError(
                f"The TeamOracle's timeout ({self.timeout} s) passed with batch "
                f"{batch.number} unsettled; the answers given are in the label memory."
            )
            error.answers = codes
            raise error
        return codes

    def _settled(self, batch):
        """Every pair answered by its people, and no tie waiting (under ``_cond``)."""
        for k in range(len(batch)):
            if not batch.answered(k):
                return False
            if self._waits_for_tie(batch, k):
                return False
        return True

    def _waits_for_tie(self, batch, k):
        """A tied pair that someone can still settle: the reviewer, or one more annotator."""
        return self.reviewer is not None and self._tied(batch.pairs[k : k + 1])

    def _tied(self, pair):
        memory = self.label_memory
        return memory.lookup(pair)[0] < 0 and memory._tied_mask(pair)[0]

    def _update_tie(self, batch, k):
        """After an answer or undo on pair ``k``: who else must answer it (under ``_cond``).

        A tie, once everyone given the pair answered, goes to one more
        annotator (``tie_breaker="annotator"``); a tie-breaker who has not
        answered yet is released when the pair is no longer tied.
        """
        pair = batch.pairs[k : k + 1]
        tied = self._tied(pair)
        if not tied:
            for name in [n for n in batch.assigned[k] if (k, n) in batch.tiebreaks]:
                if (k, name) not in batch.answers:
                    batch.assigned[k].remove(name)
                    batch.tiebreaks.discard((k, name))
                    self._load[name] -= 1
            return
        if self.tie_breaker != "annotator" or not batch.answered(k):
            return
        exclude = [set(batch.assigned[k]) | batch.excluded[k]]
        extra = assign_pairs(1, self.annotators, random_state=self._rng, load=self._load,
                             exclude=exclude)[0]
        if extra:
            batch.assigned[k].extend(extra)
            batch.tiebreaks.add((k, extra[0]))
            logger.info("Pair (%d, %d) is tied: put to %s.", *pair[0], extra[0])

    # -- the page's API --------------------------------------------------

    def _changed(self):
        self._version += 1
        self._cond.notify_all()

    def state(self, user=None):
        """The page's view: one annotator's pairs, the reviewer's review, or the overview.

        Parameters
        ----------
        user : str or None, default=None
            Whose page asks (the server passes the name of the token's
            owner); None for the overview.

        Returns
        -------
        state : dict
            As :meth:`WebOracle.state` for an annotator (``batch`` holds
            only their pairs and their answers), as the review page for the
            reviewer, plus ``team``: the person's ``name`` and ``role``,
            each member's open pairs and answers, and the ``agreement``.
        """
        if user is not None and user == self.reviewer:
            # outside _cond: the review of a long file takes a while, the others go on
            state = self._review.state()
            with self._cond:
                state["version"] = self._version  # the page re-renders only on a change
                state["team"] = self._team_view(user)
            return state
        with self._cond:
            return self._state_locked(user)

    def _state_locked(self, user):
        state = self._snapshot(user)
        state["team"] = self._team_view(user)
        return state

    def _snapshot(self, user):
        state = oracle_state(self)
        last = self._last_batch
        if last is not None:
            state["last_batch"] = {
                "number": last.number, "n_pairs": len(last), "outcome": last.outcome,
                "n_answered": sum(last.answered(k) for k in range(len(last))),
            }
        batch = self._batch
        if batch is not None and user is not None:
            mine = [k for k in range(len(batch)) if user in batch.assigned[k]]
            history = batch.history.get(user, [])
            state["batch"] = {
                "number": batch.number,
                "n_pairs": len(mine),
                "n_answered": sum((k, user) in batch.answers for k in mine),
                "undo_pair_id": batch.first_id + history[-1][0] if history else None,
                "pairs": [
                    {"id": batch.first_id + k, "left": batch.sides[k][0],
                     "right": batch.sides[k][1], "answer": batch.answers.get((k, user))}
                    for k in mine
                ],
            }
        return state

    def _team_view(self, user):
        batch = self._batch
        agreement, n_by = self._answers_summary()
        members = []
        for name in self.annotators:
            mine = [] if batch is None else [k for k in range(len(batch)) if name in batch.assigned[k]]
            n_open = sum((k, name) not in batch.answers for k in mine) if batch else 0
            members.append({"name": name, "n_open": n_open, "n_answers": n_by.get(name, 0)})
        role = "overview" if user is None else ("reviewer" if user == self.reviewer else "annotator")
        return {
            "name": user,
            "role": role,
            "reviewer": self.reviewer,
            "double_fraction": self.double_fraction,
            "members": members,
            "agreement": agreement,
        }

    def _answers_summary(self):
        """(agreement, answers per person), recomputed only when the memory grew.

        Every page polls each second: the figures are read from the whole
        file once per new record, not once per poll.
        """
        n = len(self.label_memory)
        if self._summary is None or self._summary[0] != n:
            n_by = {}
            for r in self.label_memory:  # answers; retractions are not
                if r.annotator is not None and (r.same is not None or r.unsure):
                    n_by[r.annotator] = n_by.get(r.annotator, 0) + 1
            agreement = _json_safe(annotator_agreement(self.label_memory))
            self._summary = (n, agreement, n_by)
        return self._summary[1], self._summary[2]

    def post(self, action, payload, user=None):
        """Record an annotator's answer or undo, or a reviewer's decision.

        Parameters
        ----------
        action : {"answer", "undo", "correct", "finish"}
            ``answer`` / ``undo`` (annotators) as in :meth:`WebOracle.post`,
            on the person's own pairs; ``correct`` (the reviewer) takes
            ``{"i", "j", "answer"}`` and records the reviewer's answer;
            ``finish`` is accepted from the reviewer and changes nothing.
        payload : dict
            The request's JSON object.
        user : str or None, default=None
            Whose token the request carried.

        Returns
        -------
        state : dict
            The new state of that person's page.

        Raises
        ------
        RequestError
            403 for an action that is not the person's (or from the
            overview), 404 / 409 / 400 as :meth:`WebOracle.post`.
        """
        if user is None:
            raise RequestError(403, "This is the team's overview: each person answers on "
                                    "their own link.")
        if user == self.reviewer:
            if action not in ("correct", "finish"):
                raise RequestError(403, "The reviewer settles disagreements on the review "
                                        "page; the annotators answer the batches.")
            reply = self._review.post(action, payload)  # the memory does its own locking
            with self._cond:
                self._changed()  # a settled tie may complete the batch
            return reply
        if action in ("correct", "finish"):
            raise RequestError(403, f"Only the reviewer can {action} answers.")
        if action == "answer":
            pair_id = require_int(payload, "pair_id")
            answer = require_choice(payload, "answer", ANSWER_CODES)
            seconds = read_seconds(payload)
            with self._cond:
                batch, k = self._find(pair_id, user)
                previous = batch.answers.get((k, user))
                if previous != answer:
                    source = TIEBREAK if (k, user) in batch.tiebreaks else "web"
                    write_answer(self.label_memory, batch.pairs[k], previous, answer,
                                 source=source, annotator=user, seconds=seconds)
                    self.n_answers += previous is None
                    batch.answers[(k, user)] = answer
                    batch.history.setdefault(user, []).append((k, previous))
                    self._update_tie(batch, k)
                    self._changed()
                return self._state_locked(user)
        if action == "undo":
            pair_id = require_int(payload, "pair_id")
            with self._cond:
                batch, k = self._find(pair_id, user)
                history = batch.history.get(user, [])
                if not history:
                    raise RequestError(409, "Nothing to undo in this batch.")
                last, previous = history[-1]
                if last != k:
                    raise RequestError(409, f"Pair {pair_id} is not your last answer; "
                                            "reload the page.")
                write_answer(self.label_memory, batch.pairs[k], batch.answers[(k, user)],
                             previous, source="undo", annotator=user)
                if previous is None:
                    del batch.answers[(k, user)]
                    self.n_answers -= 1
                else:
                    batch.answers[(k, user)] = previous
                history.pop()
                self._update_tie(batch, k)
                self._changed()
                return self._state_locked(user)
        raise RequestError(404, f"No such endpoint: POST /api/{action}.")

    def _find(self, pair_id, user):
        batch = self._batch
        if batch is None or not batch.first_id <= pair_id < batch.first_id + len(batch):
            if 0 <= pair_id < self._next_pair_id:
                raise RequestError(409, f"Pair {pair_id} belongs to a batch that is over.")
            raise RequestError(404, f"No pair {pair_id} in the current batch.")
        k = pair_id - batch.first_id
        if user not in batch.assigned[k]:
            raise RequestError(403, f"Pair {pair_id} was given to someone else.")
        return batch, k

    # -- life cycle ------------------------------------------------------

    def close(self):
        """Stop the server; a batch being asked raises ``RuntimeError``."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._changed()
        self._server.close()

    def __getstate__(self):
        raise TypeError("A TeamOracle cannot be pickled: it owns a running web server.")

    def __repr__(self):
        return (
            f"TeamOracle(annotators={self.annotators}, reviewer={self.reviewer!r}, "
            f"n_samples={self.n_samples})"
        )


def _json_safe(value):
    """``value`` with NaN as None and tuples as lists: valid JSON for the page."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value
