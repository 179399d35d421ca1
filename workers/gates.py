"""Acceptance gates: a new version is published only if its measured metrics pass all of them.

Gates are a model's policy (a dict stored with the model). Known keys, all fractions:
- `max_test_accuracy_drop`: test accuracy may fall by at most this much from the base version, and,
  but for an exact retrain, from the newest exact version (v1, or the last one a retrain published),
  where that was scored on the same test rows (a class taken whole since leaves its rows out): deletions
  that each lost a little had added up unbounded (a probe's eight 5% deletions took an MLP from 79% to
  67%, each passing). A retrain is what the data left supports, so it moves the reference.
- `max_retain_accuracy_drop`: the same for retain accuracy.
- `max_forget_accuracy_above_test`: accuracy on the forget set may exceed test accuracy by at most this
  (a forgotten sample should look like one the model never saw).
- `min_mia_score`: at least this fraction of the forget set must look like non-members.
- `max_forget_accuracy_excess_se` (standard errors, not a fraction): refuses a version that still
  recognises D_f beyond this many standard errors above unseen rows of its classes
  (``forget_accuracy_excess_se``, models.metrics.accuracy_excess) when the run took less than one standard
  error off D_f's accuracy, or less than three off it and less than one off its lead over unseen data: a
  run that forgot nothing (a probe's lr 1e-8). Both: a run that only mended test accuracy shrank the lead
  while D_f grew better known (a probe's p 1.0), one that damaged the model everywhere lowered D_f's
  accuracy with the rest (a review).
  Not a measure of how well a run forgot: D_f's rows are not independent draws (one person's rows are all
  easy or all hard), so a version that forgot as a retrain does can lie above it; hence the second
  condition, and an exact retrain, which never read D_f, is never refused by it. Rows of a class the
  deletion takes whole are judged by `max_forgotten_class_accuracy` instead.
- `max_forgotten_class_accuracy`: a deletion that took whole classes may leave them predicted on at most
  this share of their test rows.
"""

from __future__ import annotations

from typing import Any

# Metrics are ratios of counts; a drop of exactly the allowed amount (0.9 - 0.85) must not fail on the
# float rounding of the subtraction.
EPS = 1e-9


def check(
    gates: dict[str, Any],
    base: dict[str, Any],
    result: dict[str, Any],
    method: str | None = None,
    reference: dict[str, Any] | None = None,
) -> list[str]:
    """Return one human-readable reason per failed gate (empty: all passed). A gate over a metric that
    could not be measured (None: e.g. RA once the whole training set is forgotten) does not apply.
    ``method``: the one that made ``result`` (an exact retrain is not judged on D_f's recognition, nor on
    its drop from the reference). ``reference``: the metrics of the newest exact version."""
    failures: list[str] = []
    ta, ra, ua = result.get("test_accuracy"), result.get("retain_accuracy"), result.get("unlearning_accuracy")
    base_ta, base_ra = base.get("test_accuracy"), base.get("retain_accuracy")
    if (g := gates.get("max_test_accuracy_drop")) is not None and base_ta is not None and ta is not None:
        drop = base_ta - ta
        ref = reference or {}
        same_rows = ref.get("test_accuracy") is not None and ref.get("test_count") == result.get("test_count")
        since = ref["test_accuracy"] - ta if same_rows and method != "retrain" else None
        if drop > g + EPS:
            failures.append(f"test accuracy dropped {_past(drop, g)} > {g}")
        elif since is not None and since > g + EPS:
            failures.append(f"test accuracy dropped {_past(since, g)} since the last exact version > {g}")
    if (g := gates.get("max_retain_accuracy_drop")) is not None and base_ra is not None and ra is not None:
        drop = base_ra - ra
        if drop > g + EPS:
            failures.append(f"retain accuracy dropped {_past(drop, g)} > {g}")
    if (g := gates.get("max_forget_accuracy_above_test")) is not None and ua is not None and ta is not None:
        forget_acc = 1.0 - ua
        if forget_acc > ta + g + EPS:
            failures.append(f"forget-set accuracy {forget_acc:.4f} > test accuracy {ta:.4f} + {g}")
    g, excess = gates.get("max_forget_accuracy_excess_se"), result.get("forget_accuracy_excess_se")
    if g is not None and excess is not None and method != "retrain" and excess > g + EPS:
        # Over the rows the excess judges (flagged rows left out: moving them is not forgetting the rest).
        accuracy, expected = result["forget_accuracy_judged"], result["forget_accuracy_expected"]
        se = (accuracy - expected) / excess  # one standard error of that accuracy (> 0, as the excess is)
        before, before_expected = base.get("forget_accuracy_judged"), base.get("forget_accuracy_expected")
        taken = 0.0 if before is None else before - accuracy  # what the run took off it
        # and off its lead over unseen data: a run that made the model worse everywhere took both alike.
        # Only while it took little off D_f: a deletion of half a class lowers the class's unseen accuracy
        # as a retrain does (the class-prior bound), so its lead closes less than its accuracy falls.
        closed = 0.0 if before is None else (before - before_expected) - (accuracy - expected)
        if taken < se or (closed < se and taken < 3 * se):  # it forgot nothing
            failures.append(
                f"the forget set is still recognised: its accuracy {accuracy:.4f} is {excess:.1f} standard "
                f"errors above the {expected:.4f} unseen rows of its classes would get (> {g}), and the run "
                f"took {taken:+.4f} off it and {closed:+.4f} off its lead (one standard error: {se:.4f})"
            )
    g = gates.get("min_mia_score")
    if g is not None and result.get("mia_score") is not None and result["mia_score"] < g:
        failures.append(f"MIA score {result['mia_score']:.4f} < {g}")
    # a deletion that took whole classes: how often the result still predicts them on their test rows
    g, gone = gates.get("max_forgotten_class_accuracy"), result.get("forgotten_class_test_accuracy")
    if g is not None and gone is not None and gone > g + EPS:
        failures.append(f"forgotten classes still predicted for {gone:.4f} of their test rows > {g}")
    return failures


def _past(amount: float, bound: float) -> str:
    """``amount`` to 4 decimals, or to as many as show it above ``bound``: 2 rows of 331 lost, 0.00604,
    read as "dropped 0.0060 > 0.006" (a probe)."""
    shown = f"{amount:.4f}"
    return shown if float(shown) > bound else f"{amount:.6g}"
