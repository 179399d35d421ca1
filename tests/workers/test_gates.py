"""Acceptance gates (`workers.gates.check`), each at its boundary. The boundary values are exact binary
fractions (multiples of 1/16), so these tests pin the comparison itself, not floating-point rounding."""

from __future__ import annotations

from typing import Any

from workers.gates import check

GATES = (
    "max_test_accuracy_drop",
    "max_retain_accuracy_drop",
    "max_forget_accuracy_above_test",
    "min_mia_score",
)
BASE = {"test_accuracy": 0.75, "retain_accuracy": 0.875}


def result(
    *,
    test_accuracy: float = 0.75,
    retain_accuracy: float = 0.875,
    unlearning_accuracy: float = 0.5,
    mia_score: float | None = 0.5,
) -> dict[str, Any]:
    """A version's metrics; by default no worse than BASE and a forget set that looks unseen."""
    return {
        "test_accuracy": test_accuracy,
        "retain_accuracy": retain_accuracy,
        "unlearning_accuracy": unlearning_accuracy,
        "mia_score": mia_score,
    }


def test_the_defaults_of_these_tests_pass_every_gate() -> None:
    gates = dict.fromkeys(GATES, 0.0) | {"min_mia_score": 0.5}
    assert check(gates, BASE, result()) == []


# -- max_test_accuracy_drop ----------------------------------------------------------------------------


def test_a_test_accuracy_drop_equal_to_the_gate_passes() -> None:
    assert check({"max_test_accuracy_drop": 0.25}, BASE, result(test_accuracy=0.5)) == []


def test_a_test_accuracy_drop_beyond_the_gate_fails_saying_by_how_much() -> None:
    failures = check({"max_test_accuracy_drop": 0.25}, BASE, result(test_accuracy=0.4375))
    assert failures == ["test accuracy dropped 0.3125 > 0.25"]


def test_a_drop_just_past_the_gate_is_shown_past_it() -> None:
    """2 rows of 331 lost, 0.00604, read as "dropped 0.0060 > 0.006" (a probe)."""
    base = {**BASE, "test_accuracy": 310 / 331}
    failures = check({"max_test_accuracy_drop": 0.006}, base, result(test_accuracy=308 / 331))
    assert failures == ["test accuracy dropped 0.0060423 > 0.006"]


def test_a_test_accuracy_gain_passes_a_zero_drop_gate() -> None:
    assert check({"max_test_accuracy_drop": 0.0}, BASE, result(test_accuracy=0.8125)) == []


def test_a_zero_test_accuracy_gate_is_enforced_not_treated_as_unset() -> None:
    assert len(check({"max_test_accuracy_drop": 0.0}, BASE, result(test_accuracy=0.6875))) == 1


def test_a_test_accuracy_drop_equal_to_a_decimal_gate_passes() -> None:
    base = {**BASE, "test_accuracy": 18 / 20}
    assert check({"max_test_accuracy_drop": 0.05}, base, result(test_accuracy=17 / 20)) == []


def test_test_accuracy_drops_that_add_up_past_the_gate_fail_against_the_last_exact_version() -> None:
    """Each of a probe's eight 5% deletions lost a little and passed: an MLP went from 79% to 67%. The
    drop from the newest exact version (v1, or a retrain's) is bounded too, where both were scored on the
    same test rows; an exact retrain is what the data left supports, and is not held to it (a review:
    held to v1, retrains that each lost a little refused every later run)."""
    gates = {"max_test_accuracy_drop": 0.25}
    base = {**BASE, "test_accuracy": 0.625}  # already 0.25 below the reference, within the gate each time
    ref = {"test_accuracy": 0.875, "test_count": 16}

    def run(ta: float, method: str = "ugradsl_plus", count: int = 16, reference: Any = ref) -> list[str]:
        return check(gates, base, {**result(test_accuracy=ta), "test_count": count}, method, reference)

    assert run(0.5625) == ["test accuracy dropped 0.3125 since the last exact version > 0.25"]
    assert run(0.625) == []  # at the bound
    assert run(0.5625, method="retrain") == []
    assert run(0.5625, reference=None) == []  # no exact version measured
    # a class taken whole since leaves its test rows out: scores of other rows are not compared (a review)
    assert run(0.5625, count=12) == []


# -- max_retain_accuracy_drop --------------------------------------------------------------------------


def test_a_retain_accuracy_drop_equal_to_the_gate_passes() -> None:
    assert check({"max_retain_accuracy_drop": 0.125}, BASE, result(retain_accuracy=0.75)) == []


def test_a_retain_accuracy_drop_beyond_the_gate_fails_saying_by_how_much() -> None:
    failures = check({"max_retain_accuracy_drop": 0.125}, BASE, result(retain_accuracy=0.6875))
    assert failures == ["retain accuracy dropped 0.1875 > 0.125"]


def test_the_retain_gate_ignores_a_test_accuracy_drop() -> None:
    assert check({"max_retain_accuracy_drop": 0.0}, BASE, result(test_accuracy=0.0)) == []


# -- max_forget_accuracy_above_test --------------------------------------------------------------------


def test_forget_accuracy_exactly_the_margin_above_test_accuracy_passes() -> None:
    # forget accuracy = 1 - unlearning accuracy = 0.75 = test accuracy 0.5 + margin 0.25
    gates = {"max_forget_accuracy_above_test": 0.25}
    assert check(gates, BASE, result(test_accuracy=0.5, unlearning_accuracy=0.25)) == []


def test_forget_accuracy_beyond_the_margin_above_test_accuracy_fails() -> None:
    gates = {"max_forget_accuracy_above_test": 0.25}
    failures = check(gates, BASE, result(test_accuracy=0.5, unlearning_accuracy=0.1875))
    assert failures == ["forget-set accuracy 0.8125 > test accuracy 0.5000 + 0.25"]


def test_the_forget_gate_compares_with_the_new_test_accuracy_not_the_base() -> None:
    # 0.75 forget accuracy is fine against the base's 0.75 test accuracy, not against the result's 0.5
    gates = {"max_forget_accuracy_above_test": 0.0}
    assert len(check(gates, BASE, result(test_accuracy=0.5, unlearning_accuracy=0.25))) == 1


# -- min_mia_score -------------------------------------------------------------------------------------


def test_a_mia_score_equal_to_the_minimum_passes() -> None:
    assert check({"min_mia_score": 0.625}, BASE, result(mia_score=0.625)) == []


def test_a_mia_score_below_the_minimum_fails() -> None:
    assert check({"min_mia_score": 0.625}, BASE, result(mia_score=0.5625)) == ["MIA score 0.5625 < 0.625"]


def test_the_mia_gate_is_skipped_when_the_result_has_no_mia_score() -> None:
    assert check({"min_mia_score": 1.0}, BASE, result(mia_score=None)) == []


def test_the_mia_gate_is_skipped_when_the_result_lacks_the_mia_key() -> None:
    metrics = result()
    del metrics["mia_score"]
    assert check({"min_mia_score": 1.0}, BASE, metrics) == []


# -- several gates -------------------------------------------------------------------------------------


def test_every_failed_gate_is_reported_together_in_gate_order() -> None:
    gates = {
        "min_mia_score": 0.5,
        "max_forget_accuracy_above_test": 0.0,
        "max_retain_accuracy_drop": 0.0,
        "max_test_accuracy_drop": 0.0,
    }
    bad = result(test_accuracy=0.5, retain_accuracy=0.5, unlearning_accuracy=0.0, mia_score=0.0)
    failures = check(gates, BASE, bad)
    assert [f.split()[0] for f in failures] == ["test", "retain", "forget-set", "MIA"]


def test_only_the_failing_gates_are_reported() -> None:
    gates = {"max_test_accuracy_drop": 0.0, "max_retain_accuracy_drop": 0.5, "min_mia_score": 0.75}
    failures = check(gates, BASE, result(test_accuracy=0.5, retain_accuracy=0.5, mia_score=0.5))
    assert failures == ["test accuracy dropped 0.2500 > 0.0", "MIA score 0.5000 < 0.75"]


def test_no_gates_pass_anything() -> None:
    worst = result(test_accuracy=0.0, retain_accuracy=0.0, unlearning_accuracy=0.0, mia_score=0.0)
    assert check({}, BASE, worst) == []


def test_a_gate_set_to_none_is_not_applied() -> None:
    gates = {name: None for name in GATES}
    worst = result(test_accuracy=0.0, retain_accuracy=0.0, unlearning_accuracy=0.0, mia_score=0.0)
    assert check(gates, BASE, worst) == []


def test_a_gate_over_a_metric_that_could_not_be_measured_does_not_apply() -> None:
    gates = {"max_retain_accuracy_drop": 0.0, "max_test_accuracy_drop": 0.0, "min_mia_score": 1.0}
    base = {"retain_accuracy": 1.0, "test_accuracy": 0.9}
    result = {"retain_accuracy": None, "test_accuracy": 0.9, "mia_score": None, "unlearning_accuracy": 0.5}
    assert check(gates, base, result) == []
    assert check(gates, base, {**result, "test_accuracy": 0.5}) == ["test accuracy dropped 0.4000 > 0.0"]


def test_a_forgotten_class_still_predicted_beyond_the_gate_fails_and_at_it_passes() -> None:
    gates = {"max_forgotten_class_accuracy": 0.0625}
    assert check(gates, BASE, {**result(), "forgotten_class_test_accuracy": 0.0625}) == []
    [why] = check(gates, BASE, {**result(), "forgotten_class_test_accuracy": 0.125})
    assert why == "forgotten classes still predicted for 0.1250 of their test rows > 0.0625"
    assert check(gates, BASE, result()) == []  # no class left: nothing to judge


def test_a_forgotten_class_still_predicted_is_a_warning_on_the_attempt() -> None:
    from workers.runner import still_predicted

    metrics = {"forgotten_class_test_accuracy": 0.2, "forgotten_class_test_count": 15}
    [warning] = still_predicted([2], metrics)
    assert "forgotten class 2 is still predicted for 20.0% of its 15 test rows" in warning
    assert still_predicted([2], {**metrics, "forgotten_class_test_accuracy": 0.0}) == []
    assert still_predicted(None, metrics) == []


def test_rows_sent_as_mislabeled_still_predicted_as_their_label_are_a_warning_but_after_a_retrain() -> None:
    """A run moves flagged rows for one sized run; a retrain predicts them as the rest of the data teaches,
    which is where a deletion should leave them, so only the first is warned of."""
    from workers.runner import attempt_warnings

    metrics = {"flagged_label_accuracy": 0.4, "flagged_count": 5}
    [warning] = attempt_warnings("ugradsl_plus", None, metrics)
    assert warning.startswith("2 of the 5 rows sent as mislabeled are still predicted as the label")
    assert attempt_warnings("retrain", None, metrics) == []
    assert attempt_warnings("ugradsl_plus", None, {**metrics, "flagged_label_accuracy": 0.0}) == []
    assert attempt_warnings("ugradsl_plus", None, {}) == []  # nothing flagged
    both = {**metrics, "forgotten_class_test_accuracy": 0.2, "forgotten_class_test_count": 15}
    assert len(attempt_warnings("finetune", [2], both)) == 2


def test_rows_sent_as_mislabeled_that_their_neighbours_hold_are_a_warning_to_send_them_as_erasure() -> None:
    """A probe's correctly labelled rows sent as mislabeled were pushed off their labels (23 of 25 away
    rows) and cost test accuracy within the gate, with only a word that reads as too little forgetting."""
    from workers.runner import attempt_warnings

    base = {"test_accuracy": 0.910}
    metrics = {"flagged_label_accuracy": 0.52, "flagged_count": 25, "test_accuracy": 0.855, "test_count": 450}
    runs = [{"sized_by": "pushes", "away_rows": 23, "contradicted_rows": 2}]
    warnings = attempt_warnings("ugradsl_plus", None, metrics, runs, base)
    assert len(warnings) == 2 and warnings[1].startswith("23 of the 25 rows sent as mislabeled have")
    assert "fell from 0.9100 to 0.8550" in warnings[1] and "reason erasure" in warnings[1]
    few = [{"away_rows": 12, "contradicted_rows": 13}]  # most contradicted: mislabeled as sent
    assert len(attempt_warnings("ugradsl_plus", None, metrics, few, base)) == 1
    assert attempt_warnings("retrain", None, metrics, runs, base) == []
    # A backdoor's rows are such rows too, and removing them leaves test accuracy where it was (within
    # two standard errors, 0.027 on 450 rows): no word against it.
    held = {**metrics, "test_accuracy": 0.895}
    assert len(attempt_warnings("ugradsl_plus", None, held, runs, base)) == 1
    # The loss may stay within the whole test set's noise and still wreck the rows' class: a client's 60
    # right rows of one class cost it 0.841 -> 0.523 on 44 test rows, and all classes 0.761 -> 0.754
    on_class = {"flagged_classes_test_accuracy": 0.841, "flagged_classes_test_count": 44}
    fell = {**held, "flagged_classes_test_accuracy": 0.523, "flagged_classes_test_count": 44}
    warnings = attempt_warnings("ugradsl_plus", None, fell, runs, {**base, **on_class})
    assert len(warnings) == 2 and "test accuracy on their classes fell from 0.8410 to 0.5230" in warnings[1]
    worse = {**fell, "test_accuracy": 0.855}  # both fell: both are named (the first alone was)
    both = attempt_warnings("ugradsl_plus", None, worse, runs, {**base, **on_class})
    assert "test accuracy fell from 0.9100 to 0.8550 and test accuracy on their classes fell" in both[1]
    kept = {**fell, "flagged_classes_test_accuracy": 0.80}  # within 2 SE (0.11 on 44 rows)
    assert len(attempt_warnings("ugradsl_plus", None, kept, runs, {**base, **on_class})) == 1


def test_weights_the_base_held_infinite_are_the_architectures_not_a_divergence() -> None:
    """A class masked with -inf (a buffer the model was registered with) is no divergence: it had failed
    every attempt of such a model as diverged; a NaN the run made is one."""
    import copy

    import torch

    from workers.runner import non_finite_weights

    base = torch.nn.Linear(3, 3)
    base.register_buffer("mask", torch.tensor([0.0, 0.0, float("-inf")]))
    model = copy.deepcopy(base)
    assert non_finite_weights(model, base) is None
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
        model.bias[1] = float("inf")
    assert non_finite_weights(model, base) == "2 of its 15 weights are NaN or infinite"


def test_a_run_that_forgot_nothing_fails_the_excess_gate_and_one_that_forgot_or_a_retrain_does_not() -> None:
    gates = {"max_forget_accuracy_excess_se": 3.0}
    base = {**BASE, "forget_accuracy_judged": 1.0, "forget_accuracy_expected": 0.78}
    # D_f all known where unseen rows of its classes score 0.78: 0.22 above, one standard error 0.03.
    known = {
        **result(unlearning_accuracy=0.0),
        "forget_accuracy_judged": 1.0,
        "forget_accuracy_expected": 0.78,
    }
    assert check(gates, base, {**known, "forget_accuracy_excess_se": 3.0}) == []  # at the gate
    [why] = check(gates, base, {**known, "forget_accuracy_excess_se": 7.333})
    assert why == (
        "the forget set is still recognised: its accuracy 1.0000 is 7.3 standard errors above the 0.7800 "
        "unseen rows of its classes would get (> 3.0), and the run took +0.0000 off it and +0.0000 off its "
        "lead (one standard error: 0.0300)"
    )
    # A run that took more than a standard error off D_f's accuracy forgot something (one person's rows,
    # all easy, are above unseen data after a retrain too): not refused by this gate.
    forgot = {**known, "forget_accuracy_judged": 0.95, "forget_accuracy_excess_se": 5.7}
    assert check(gates, base, forgot) == []
    # One that mended test accuracy (expected up) while D_f grew better known is refused, whatever the
    # base's own excess was (a probe's p 1.0 run passed when the two excesses were compared).
    mended = {**known, "forget_accuracy_excess_se": 6.96}
    assert check(gates, {**base, "forget_accuracy_judged": 0.95, "forget_accuracy_excess_se": 8.12}, mended)
    # One that damaged the model everywhere took D_f's accuracy down with unseen data's: refused too.
    damaged = {**known, "forget_accuracy_judged": 0.956, "forget_accuracy_expected": 0.764}
    assert check(
        gates, {**base, "forget_accuracy_expected": 0.794}, {**damaged, "forget_accuracy_excess_se": 6.4}
    )
    # Half of a class (a client's numbers): the class's unseen accuracy fell too, as after a retrain, so the
    # lead closed less than a standard error, but D_f's accuracy fell by four: it forgot, not refused.
    half = {**known, "forget_accuracy_judged": 0.746, "forget_accuracy_expected": 0.557}
    half_base = {**base, "forget_accuracy_expected": 0.772}
    assert check(gates, half_base, {**half, "forget_accuracy_excess_se": 3.05}) == []
    # An exact retrain never read D_f: whatever its number says, it is not refused for it.
    assert check(gates, base, {**known, "forget_accuracy_excess_se": 7.333}, method="retrain") == []
    assert check(gates, BASE, result()) == []  # not measured (no test rows): nothing to judge


def test_a_repeated_log_line_is_the_errors_type_and_first_line() -> None:
    """A heartbeat failing every 2 s through an outage logged a whole traceback each time (a probe)."""
    from service.core.errors import one_line

    said = one_line(ValueError("connection refused\nBackground on this error"))
    assert said == "ValueError: connection refused"
    assert one_line(KeyError()) == "KeyError"
