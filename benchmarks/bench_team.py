"""A team of three fallible annotators, one of them 20 % wrong, against its best member alone.

The drift setting of ``bench_drift.py`` (re-id-like embeddings that drift
over rounds, the base clustering redone every round, ucal's default
refiner asking through one label memory kept for the whole run), with
simulated people:

* single annotators with 2 %, 5 % and 20 % of answers flipped
  (``NoisyOracle``), each asking what the refiner wants;
* the team of those three (``AnnotatorTeam``): pairs shared out evenly (or
  routed by reliability once measured), a ``double_fraction`` of them
  answered by two people, a tie put to the third; the answers used are the
  majority's (``LabelMemory(resolution="majority")``). The team is held,
  round by round, to its best member's (the 2 % annotator's) budget:
  either the same number of *answers* (the same human effort: its question
  limit is what is left of that budget divided by the answers a question
  costs), or the same number of *questions* (the same labeling cost,
  Eq. 7 of the paper; the team's three people give more answers in all,
  each no more than the best member alone);
* the team's agreement figures (Cohen's kappa of each person against the
  others, on the double-annotated pairs), which should single out the
  20 % annotator.

Reported per method: mean pairwise F over rounds and its gain over the
base clustering (mean ± sd over seeds), the paired difference from the best
member alone (seed by seed), questions, answers; per team member: answers
and kappa.

Usage::

    python benchmarks/bench_team.py              # 6,300 samples, 8 rounds, 6 seeds
    python benchmarks/bench_team.py --quick      # smoke run, not saved

Saves ``benchmarks/results/team.{json,md}``.
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_drift import _environment, _methods, f_score, make_rounds

from ucal.cluster import SelfPacedDBSCAN
from ucal.oracles import (
    AnnotatorTeam,
    BudgetExhaustedWarning,
    LabelMemory,
    LabelOracle,
    NoisyOracle,
    annotator_agreement,
)

RESULTS = Path(__file__).resolve().parent / "results"
TEAM = {"ann (2 %)": 0.02, "bob (5 %)": 0.05, "cat (20 %)": 0.20}
SINGLE = {"single, 2 %": 0.02, "single, 5 %": 0.05, "single, 20 %": 0.20}
BEST = "single, 2 %"  # the team's best member alone: the reference the team is held to


def _refine(rounds, base_labels, y, oracle, memory, limit_of):
    """Every round: refine the base clustering through ``memory``; F per round and questions."""
    make_refiner = _methods()["default"][0]
    fs, asked = [], []
    for r, (X, labels) in enumerate(zip(rounds, base_labels)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BudgetExhaustedWarning)
            refiner = make_refiner().fit(
                X, labels=labels, oracle=oracle, label_memory=memory, query_limit=limit_of(r)
            )
        fs.append(f_score(y, refiner.labels_))
        asked.append(int(refiner.n_queries_))
    return fs, asked


def _team_name(fraction, selection, held):
    extra = ", routed by reliability" if selection == "reliability" else ""
    return f"team, {100 * fraction:.0f} % double{extra}, equal {held}"


def run(seed, args, fractions):
    rounds, y = make_rounds(args.n, args.ids, args.dim, args.rounds, seed)
    params = {"k1": 20, "k2": 6, "k1_rule": "fixed"}
    base_labels = [SelfPacedDBSCAN(**params).fit(X).labels_ for X in rounds]
    out = {"base_f": [f_score(y, labels) for labels in base_labels]}
    for k, (name, rate) in enumerate(SINGLE.items()):
        start = time.perf_counter()
        oracle = NoisyOracle(LabelOracle(y), rate, random_state=1000 * seed + k)
        fs, asked = _refine(rounds, base_labels, y, oracle, LabelMemory(), lambda r: None)
        out[name] = {"f": fs, "asked": asked, "answers": asked,
                     "seconds": time.perf_counter() - start}
        print(f"  seed {seed} {name}: F {np.mean(fs):.4f}, {sum(asked)} answers", flush=True)
    budget = np.cumsum(out[BEST]["answers"])  # the best member's answers, round by round
    for fraction, selection, held in fractions:
        name = _team_name(fraction, selection, held)
        start = time.perf_counter()
        members = {
            person: NoisyOracle(LabelOracle(y), rate, random_state=1000 * seed + 10 + k)
            for k, (person, rate) in enumerate(TEAM.items())
        }
        team = AnnotatorTeam(members, label_memory=LabelMemory(resolution="majority"),
                             double_fraction=fraction, routing=selection,
                             random_state=seed)
        per_question = 1.0 + fraction

        def limit_of(r, team=team, per_question=per_question, held=held):
            if held == "questions":
                return max(int(budget[r] - team.n_queries), 0)
            left = budget[r] - team.n_answers
            # tie-breaks cost answers too: count what a question has cost so far
            used = team.n_answers / team.n_queries if team.n_queries else per_question
            return max(int(left / max(per_question, used)), 0)

        fs, asked = _refine(rounds, base_labels, y, team, team.label_memory, limit_of)
        agreement = annotator_agreement(team.label_memory)
        out[name] = {
            "f": fs, "asked": asked, "answers": int(team.n_answers),
            "answers_by": dict(team.n_answers_by),
            "kappa": {p: agreement["annotators"][p]["kappa"] for p in TEAM},
            "error_rate": {p: agreement["annotators"][p]["error_rate"] for p in TEAM},
            "n_common": agreement["overall"]["n_common"],
            "seconds": time.perf_counter() - start,
        }
        kappas = ", ".join(f"{p} {agreement['annotators'][p]['kappa']:.2f} "
                           f"(error {agreement['annotators'][p]['error_rate']:.3f})" for p in TEAM)
        print(f"  seed {seed} {name}: F {np.mean(fs):.4f}, {team.n_answers} answers for "
              f"{sum(asked)} questions; kappa {kappas}", flush=True)
    return out


def summarise(runs, names):
    rows = []
    best_gains = [float(np.mean(np.asarray(r[BEST]["f"]) - np.asarray(r["base_f"]))) for r in runs]
    for name in ["base"] + names:
        means, gains, questions, answers = [], [], [], []
        for result in runs:
            base = np.asarray(result["base_f"])
            f = base if name == "base" else np.asarray(result[name]["f"])
            means.append(f.mean())
            gains.append((f - base).mean())
            if name != "base":
                questions.append(sum(result[name]["asked"]))
                a = result[name]["answers"]
                answers.append(sum(a) if isinstance(a, list) else a)
        row = {
            "method": name,
            "mean_f": float(np.mean(means)),
            "gain": float(np.mean(gains)),
            "gain_sd": float(np.std(gains, ddof=1)) if len(gains) > 1 else 0.0,
            "gains": [float(g) for g in gains],
            "vs_best": [float(g - b) for g, b in zip(gains, best_gains)],
            "questions": float(np.mean(questions)) if questions else 0.0,
            "answers": float(np.mean(answers)) if answers else 0.0,
        }
        if name.startswith("team"):
            for key in ("kappa", "error_rate"):
                values = {p: [result[name][key][p] for result in runs] for p in TEAM}
                row[key] = {
                    p: float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan")
                    for p, v in values.items()
                }
            # no shared pair, no kappa: nobody can be singled out
            row["least_reliable"] = [
                "n/a" if all(np.isnan(list(result[name]["kappa"].values())))
                else min(TEAM, key=lambda p: result[name]["kappa"][p])
                for result in runs
            ]
            row["most_errors"] = [
                "n/a" if all(np.isnan(list(result[name]["error_rate"].values())))
                else max(TEAM, key=lambda p: result[name]["error_rate"][p])
                for result in runs
            ]
            row["answers_by"] = {
                p: float(np.mean([result[name]["answers_by"].get(p, 0) for result in runs]))
                for p in TEAM
            }
        rows.append(row)
    return rows


def _tables(rows):
    lines = [
        "| method | mean F | gain over base (mean ± sd over seeds) | per seed "
        "| minus the best member's gain (mean ± sd; seeds >= 0) | questions | answers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        seeds = " / ".join(f"{g:+.4f}" for g in r["gains"])
        diff = np.asarray(r["vs_best"])
        vs = (f"{diff.mean():+.4f} ± {diff.std(ddof=1) if len(diff) > 1 else 0.0:.4f}; "
              f"{int((diff >= 0).sum())} of {len(diff)}")
        lines.append(
            f"| {r['method']} | {r['mean_f']:.4f} | {r['gain']:+.4f} ± {r['gain_sd']:.4f} | "
            f"{seeds} | {vs} | {r['questions']:.0f} | {r['answers']:.0f} |"
        )
    lines += ["", "| team | " + " | ".join(f"{p}: answers, kappa, est. error rate" for p in TEAM)
              + " | lowest kappa (per seed) | highest est. error rate (per seed) |",
              "|---|" + "---|" * (len(TEAM) + 2)]
    for r in rows:
        if "kappa" in r:
            cells = [f"{r['answers_by'][p]:.0f}, {r['kappa'][p]:.3f}, {r['error_rate'][p]:.3f}"
                     for p in TEAM]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " | "
                         + ", ".join(r["least_reliable"]) + " | "
                         + ", ".join(r["most_errors"]) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6300)
    parser.add_argument("--ids", type=int, default=420)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.0, 0.2, 0.5, 1.0],
                        help="double-annotated fractions, pairs drawn at random")
    parser.add_argument("--reliable-fractions", type=float, nargs="*", default=[0.1, 0.2, 0.35],
                        help="double-annotated fractions, work routed by reliability")
    parser.add_argument("--question-fractions", type=float, nargs="*", default=[0.2, 1.0],
                        help="double-annotated fractions, routed by reliability, the team held "
                             "to the best member's questions (not answers); 1.0 also evenly")
    parser.add_argument("--quick", action="store_true", help="2,000 samples, 3 rounds, 1 seed")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.ids, args.rounds, args.seeds, args.no_save = 2000, 140, 3, [0], True
    fractions = [(f, "uniform", "answers") for f in args.fractions]
    fractions += [(f, "reliability", "answers") for f in args.reliable_fractions]
    fractions += [(f, "uniform", "questions") for f in args.question_fractions if f == 1.0]
    fractions += [(f, "reliability", "questions") for f in args.question_fractions]
    runs = []
    for seed in args.seeds:
        runs.append(run(seed, args, fractions))
    names = list(SINGLE) + [_team_name(*spec) for spec in fractions]
    rows = summarise(runs, names)
    table = _tables(rows)
    print(table, flush=True)
    if args.no_save:
        return
    RESULTS.mkdir(exist_ok=True)
    report = {"environment": _environment(args), "team": TEAM, "runs": runs, "summary": rows}
    (RESULTS / "team.json").write_text(json.dumps(report, indent=1))
    env = report["environment"]
    header = (
        "# A team of fallible annotators against one\n\n"
        f"Data: the drift setting (`bench_drift.py`): synthetic embeddings, N = {args.n} "
        f"({args.ids} identities), d = {args.dim}, {args.rounds} rounds, seeds {args.seeds}; "
        "base clustering SelfPacedDBSCAN(k1=20, k2=6) per round; ucal's default refiner with "
        "one memory for the whole run. Single annotators flip 2 %, 5 % or 20 % of their "
        "answers. The team is those three people (`AnnotatorTeam`): pairs shared out evenly "
        "(or routed by reliability once measured), the given fraction answered by two, a tie "
        "put to the third, majority answers "
        "(`LabelMemory(resolution=\"majority\")`); it is held round by round to its best "
        "member's (the 2 % annotator's) number of answers ('equal answers': the same human "
        "effort) or of questions ('equal questions': the same labeling cost, Eq. 7). 'Minus "
        "the best member's gain': paired by seed. Kappa: each person against the others on "
        "the shared pairs. "
        f"{env['processor']}, {env['date']}.\n\n"
    )
    (RESULTS / "team.md").write_text(header + table + "\n")


if __name__ == "__main__":
    main()
