"""Oracles (who answers "same identity?" about a pair) and the label memory.

**The oracle protocol.** An oracle is any callable ``oracle(pairs) -> answers``:

- ``pairs`` is an int array of shape ``(m, 2)`` of sample indices into the
  ``X`` given to ``fit``; pairs come in batches so that a human can answer
  a page at a time and a simulator can vectorise;
- ``answers`` is array-like of shape ``(m,)`` of bool (``True`` = same
  identity), or of ints in ``{-1, 0, 1}`` where ``-1`` means "not sure"
  (recorded as such, it counts as a query; it never overrides a definite
  answer, and the pair is asked again at most once);
- anything else (wrong length, floats, strings, None, an exception) raises
  :class:`OracleError`, which names the oracle's fault; answers already
  received are kept.
- optional hook: ``oracle.set_context(labels)`` is called right before each
  batch with an int array of shape ``(n_samples,)``: the samples sharing a
  queried sample's value form its group (SNPS) or cluster (MPPS), ``-1``
  meaning none.
"""

import importlib

from ._agreement import annotator_agreement, cohen_kappa
from ._arguments import as_label_memory, check_identities, resolve_oracle
from ._exchange import export_answers, export_labels, import_answers
from ._memory import AnswerRecord, LabelMemory
from ._protocol import (
    BudgetExhaustedWarning,
    OracleError,
    check_oracle_answers,
    check_pairs,
)
from ._simulated import LabelOracle, NoisyOracle
from ._team import AnnotatorTeam, assign_pairs

__all__ = [
    "AnnotatorTeam",
    "AnswerRecord",
    "BudgetExhaustedWarning",
    "LabelMemory",
    "LabelOracle",
    "NoisyOracle",
    "OracleError",
    "WebOracle",
    "annotator_agreement",
    "as_label_memory",
    "assign_pairs",
    "check_identities",
    "check_oracle_answers",
    "check_pairs",
    "cohen_kappa",
    "export_answers",
    "export_labels",
    "import_answers",
    "resolve_oracle",
]


def __getattr__(name):
    # The web oracle (ucal.annotation) pulls in an HTTP server: load it only when asked for.
    if name == "WebOracle":
        value = importlib.import_module("ucal.annotation").WebOracle
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ucal.oracles' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
