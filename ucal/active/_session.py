"""One fit's access to the oracle and the label memory, shared by nested refiners."""

import logging
import warnings
from numbers import Integral

import numpy as np

from ..oracles import BudgetExhaustedWarning

__all__ = ["QuerySession", "check_query_limit"]

logger = logging.getLogger(__name__)


def check_query_limit(query_limit):
    """Refuse a ``query_limit`` (of a refiner's or calibrator's ``fit``) that is not an int >= 0."""
    if query_limit is not None and (
        isinstance(query_limit, bool) or not isinstance(query_limit, Integral) or query_limit < 0
    ):
        raise ValueError(f"query_limit must be an int >= 0 or None, got {query_limit!r}.")


class QuerySession:
    """The oracle, memory, budget and seed of one (outermost) refiner fit.

    Keeps the budget stack (each refiner caps the queries of its own
    subtree, and the caller of ``fit`` may cap the whole fit), the warnings
    (once per outermost fit), every pair sent, and per stage the pairs
    sent, the pairs the memory answered and the clusters changed.
    """

    def __init__(self, memory, oracle, *, query_limit=None, seed=None):
        self.memory = memory
        self.oracle = oracle
        self.seed = seed
        self.n_queries = 0
        self.n_inferred = 0
        self.pairs, self.answers, self.stages = [], [], []
        self.stage_queries, self.stage_inferred, self.stage_changes = {}, {}, {}
        self.contradictions = []
        self._caps = []  # (cap, n_queries when that refiner started)
        if query_limit is not None:
            self._caps.append((query_limit, 0))
        self._warned_budget = False
        self._warned_no_oracle = False

    def push_cap(self, cap):
        """A refiner starts: its ``max_queries`` caps everything until pop."""
        self._caps.append((cap, self.n_queries))

    def pop_cap(self):
        self._caps.pop()

    def open_stage(self, name):
        """Register a stage under a unique name (``snps``, ``snps_2``...)."""
        base, k = name, 2
        while name in self.stage_queries:
            name, k = f"{base}_{k}", k + 1
        self.stage_queries[name] = 0
        self.stage_inferred[name] = 0
        self.stage_changes[name] = 0
        return name

    def remaining(self):
        """Pairs the oracle may still be sent in this fit (None: no limit; 0 without oracle)."""
        if self.oracle is None:
            return 0
        limits = [cap - (self.n_queries - start) for cap, start in self._caps if cap is not None]
        return max(min(limits), 0) if limits else None

    def contradiction(self, stage, kind, **details):
        """Record a contradiction (or an answer awaiting confirmation) and return it."""
        event = {"stage": stage, "kind": kind, **details}
        self.contradictions.append(event)
        return event

    def settled(self, stage, n):
        """Count ``n`` relations the memory's answers settled without a question."""
        self.n_inferred += int(n)
        self.stage_inferred[stage] += int(n)

    def ask(self, pairs, *, stage, owner, context=None):
        """Ask (m, 2) pairs in priority order; return int8 answers (-1 = unknown)."""
        limits = [cap - (self.n_queries - start) for cap, start in self._caps if cap is not None]
        limit = max(min(limits), 0) if limits else None
        if context is not None and not callable(getattr(self.oracle, "set_context", None)):
            context = None
        result = self.memory._ask(
            pairs, self.oracle, max_queries=limit, context=context, source=stage
        )
        n_sent = len(result.sent_pairs)
        self.n_queries += n_sent
        self.n_inferred += result.n_inferred
        self.stage_queries[stage] += n_sent
        self.stage_inferred[stage] += result.n_inferred
        self.pairs.append(result.sent_pairs)
        self.answers.append(result.sent_answers)
        self.stages.append(np.full(n_sent, stage))
        if result.n_unsent:
            n_unknown = result.n_unsent + n_sent
            if self.oracle is None and not self._warned_no_oracle:
                self._warned_no_oracle = True
                warnings.warn(
                    f"{owner} was fitted with no oracle and no y: {result.n_unsent} "
                    "pairs the label memory could not answer were not asked; "
                    "pass oracle= (or y for a simulated oracle) to query them.",
                    UserWarning,
                    stacklevel=4,
                )
            elif self.oracle is not None and not self._warned_budget:
                self._warned_budget = True
                warnings.warn(
                    f"{owner}: the query budget (max_queries) is spent: "
                    f"{result.n_unsent} of {n_unknown} pairs the label memory could "
                    "not answer were not sent to the oracle; refinement goes on "
                    "with what is known.",
                    BudgetExhaustedWarning,
                    stacklevel=4,
                )
        logger.info(
            "%s: %d pairs, %d answered by the label memory, %d sent to the oracle, "
            "%d left unknown.",
            stage, len(pairs), result.n_inferred, n_sent, result.n_unsent,
        )
        return result.answers

    def records(self, start=0):
        """The pairs sent since record ``start``: pairs, answers and stage of each."""
        pairs = np.concatenate([np.empty((0, 2), np.int64)] + self.pairs[start:])
        answers = np.concatenate([np.empty(0, np.int8)] + self.answers[start:])
        stages = np.concatenate([np.empty(0, dtype=str)] + self.stages[start:])
        return {"pairs": pairs, "answers": answers, "stage": stages}
