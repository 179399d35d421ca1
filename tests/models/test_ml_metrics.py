import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score
from torch import nn

from models.datasets import SampleDataset
from models.metrics import (
    MIA_GRID,
    NonFiniteOutputs,
    accuracy,
    accuracy_excess,
    avg_gap,
    evaluate,
    forgotten_classes,
    loss_threshold_mia,
    loss_threshold_mia_from_loss,
    mia_efficacy,
    mia_efficacy_from_confidence,
    mia_sets,
    score_set,
)


class FixedLogits(nn.Module):
    """'Model' whose input is its logits: lets a test choose every prediction and confidence."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0 * self.dummy


def _ds(logits: torch.Tensor, y: torch.Tensor, prefix: str) -> SampleDataset:
    return SampleDataset(logits.float(), y.long(), [f"{prefix}-{i}" for i in range(len(y))])


def _confident(y: torch.Tensor, conf: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Logits whose softmax gives probability ``conf`` to class y (k = 2)."""
    logit = torch.log(conf / (1 - conf))
    out = torch.zeros(len(y), k)
    out[torch.arange(len(y)), y] = logit
    return out


def test_accuracy_matches_sklearn_across_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(1000, 5, generator=gen), torch.randint(0, 5, (1000,), generator=gen)
    ours = accuracy(FixedLogits(), _ds(logits, y, "a"), batch_size=64)
    assert ours == pytest.approx(accuracy_score(y.numpy(), logits.argmax(1).numpy()))


def test_mia_efficacy_known_answer() -> None:
    """Members (D_r) have confidence ~0.99, non-members (D_te) ~0.6. A forget set of 10 samples at 0.99
    and 30 at 0.6 must score 30/40 non-member; one all at 0.99 must score 0."""
    gen = torch.Generator().manual_seed(0)
    y = lambda n: torch.randint(0, 2, (n,), generator=gen)  # noqa: E731
    jitter = lambda n, c: (c + 0.005 * torch.rand(n, generator=gen)).clamp(max=0.999)  # noqa: E731
    yr, yt, yf = y(300), y(100), y(40)
    retain = _ds(_confident(yr, jitter(300, 0.99)), yr, "r")
    test = _ds(_confident(yt, jitter(100, 0.6)), yt, "t")
    conf_f = torch.cat([jitter(10, 0.99), jitter(30, 0.6)])
    forget = _ds(_confident(yf, conf_f), yf, "f")
    model = FixedLogits()
    assert mia_efficacy(model, forget, retain, test) == pytest.approx(0.75)
    assert loss_threshold_mia(model, forget, retain, test) == pytest.approx(0.75)
    both = evaluate(model, forget=forget, retain=retain, test=test)  # one pass per set feeds both attacks
    assert both["mia_score"] == pytest.approx(0.75) and both["mia_loss_score"] == pytest.approx(0.75)
    remembered = _ds(_confident(yf, jitter(40, 0.99)), yf, "g")
    assert mia_efficacy(model, remembered, retain, test) == 0.0


def test_the_svc_attack_on_merged_duplicates_classifies_like_the_svc_on_every_point() -> None:
    """Confidences of a memorising model repeat (float32 saturates near 1): fitting on distinct pairs with
    their counts as weights is the same problem, so the attack's verdicts match the plain fit's."""
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    members = np.concatenate([np.ones(600), 1 - rng.integers(1, 40, 900) * 6e-8, rng.uniform(0.3, 1, 300)])
    non_members = np.concatenate([np.ones(200), rng.uniform(0.05, 1, 1600)]).astype(np.float32)
    members = members.astype(np.float32)
    probe = np.concatenate([members[::7], non_members[::7], np.linspace(0, 1, 5001, dtype=np.float32)])
    plain = SVC(C=3, gamma="auto", kernel="rbf").fit(
        np.concatenate([members, non_members])[:, None],
        np.concatenate([np.ones(len(members)), np.zeros(len(non_members))]),
    )
    expected = float((plain.predict(probe[:, None]) == 0).mean())
    assert 0.05 < expected < 0.95  # the probe sees both verdicts: the comparison can fail
    assert mia_efficacy_from_confidence(members, non_members, probe) == pytest.approx(
        expected, abs=2 / len(probe)
    )


def test_the_attack_on_rounded_confidences_scores_like_the_svc_on_the_exact_ones() -> None:
    """A model fresh from unlearning gives distinct confidences; the attack rounds them to a grid
    (``MIA_GRID``) to fit in a fraction of the time. Its verdicts must match a plain SVC on the unrounded
    points, on a probe that straddles the decision boundary."""
    from sklearn.svm import SVC

    rng = np.random.default_rng(1)
    members = rng.beta(8, 1, 3000).astype(np.float32)  # confident, not saturated
    non_members = rng.beta(3, 1, 3000).astype(np.float32)
    assert len(np.unique(np.round(members / MIA_GRID))) < len(np.unique(members))  # rounding merges points
    probe = np.concatenate([rng.beta(5, 1, 2000), np.linspace(0, 1, 2001)]).astype(np.float32)
    plain = SVC(C=3, gamma="auto", kernel="rbf").fit(
        np.concatenate([members, non_members]).astype(np.float64)[:, None],
        np.concatenate([np.ones(len(members)), np.zeros(len(non_members))]),
    )
    expected = float((plain.predict(probe.astype(np.float64)[:, None]) == 0).mean())
    assert 0.05 < expected < 0.95
    assert mia_efficacy_from_confidence(members, non_members, probe) == pytest.approx(
        expected, abs=2 / len(probe)
    )


def test_evaluate_returns_fractions_and_counts_with_sampled_retain() -> None:
    gen = torch.Generator().manual_seed(1)
    mk = lambda n, p: _ds(torch.randn(n, 3, generator=gen), torch.randint(0, 3, (n,), generator=gen), p)  # noqa: E731
    out = evaluate(
        FixedLogits(), forget=mk(20, "f"), retain=mk(500, "r"), test=mk(50, "t"), retain_sample=100
    )
    assert set(out) == {
        "unlearning_accuracy", "mia_score", "mia_loss_score", "retain_accuracy", "test_accuracy",
        "forget_count", "retain_count", "test_count", "forget_accuracy_judged", "forget_accuracy_expected",
        "forget_accuracy_excess_se",
    }  # fmt: skip
    assert out["retain_count"] == 100 and out["forget_count"] == 20 and out["test_count"] == 50
    for k in ("unlearning_accuracy", "mia_score", "mia_loss_score", "retain_accuracy", "test_accuracy"):
        assert 0.0 <= out[k] <= 1.0


def test_evaluate_counts_the_flagged_rows_still_predicted_as_the_label_they_were_sent_with() -> None:
    # rows 0-3 flagged: rows 0 and 2 still predicted as their label; unflagged rows never count
    forget = _ds(torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [3.0, 0.0], [3.0, 0.0]]),
                 torch.tensor([0, 0, 0, 1, 0]), "f")  # fmt: skip
    rest = _ds(torch.randn(40, 2, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 2, "r")
    flagged = torch.tensor([True, True, True, True, False])
    out = evaluate(FixedLogits(), forget=forget, retain=rest, test=rest, forget_flagged=flagged)
    assert (out["flagged_label_accuracy"], out["flagged_count"]) == (0.5, 4)
    of_zero = torch.tensor([True, True, True, False, False])  # sent as class 0: its test rows are read
    out = evaluate(FixedLogits(), forget=forget, retain=rest, test=rest, forget_flagged=of_zero)
    zero = rest.y == 0
    right = (FixedLogits()(rest.x).argmax(1) == rest.y)[zero].float().mean().item()
    assert out["flagged_classes_test_count"] == int(zero.sum()) == 20
    assert out["flagged_classes_test_accuracy"] == pytest.approx(right)
    none = torch.zeros(5, dtype=torch.bool)
    unflagged = evaluate(FixedLogits(), forget=forget, retain=rest, test=rest, forget_flagged=none)
    assert "flagged_label_accuracy" not in unflagged and "flagged_count" not in unflagged
    # a class the deletion takes whole is lost by design: not read as the right labels pushed off (a probe)
    flagged = torch.tensor([True, True, True, True, False])  # sent as classes 0 and 1; 1 taken whole
    out = evaluate(
        FixedLogits(), forget=forget, retain=rest, test=rest, forget_flagged=flagged, forgotten_classes=[1]
    )
    assert out["flagged_classes_test_count"] == int(zero.sum())
    assert out["flagged_classes_test_accuracy"] == pytest.approx(right)


def test_outputs_that_are_nan_on_any_scored_row_are_named_not_fed_to_the_attack() -> None:
    """A diverged model's NaN outputs had reached the SVC attack, which failed with scikit-learn's advice
    on missing values; -inf confidences (a masked class) are not NaN and still score."""
    good = _ds(torch.eye(3), torch.arange(3), "g")
    for where in ("forget", "retain", "test"):
        sets = {"forget": good, "retain": good, "test": good}
        logits = torch.eye(3)
        logits[1, 0] = float("nan")
        sets[where] = _ds(logits, torch.arange(3), where)
        with pytest.raises(NonFiniteOutputs, match=r"NaN on 1 of 3 \w+ rows"):
            evaluate(FixedLogits(), **sets)
    masked = torch.eye(3)
    masked[:, 2] = float("-inf")
    assert evaluate(FixedLogits(), forget=good, retain=good, test=_ds(masked, torch.arange(3), "m"))


def test_evaluate_with_empty_forget_set_reports_none_for_forget_metrics() -> None:
    empty = SampleDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), [])
    some = _ds(torch.eye(3), torch.arange(3), "x")
    out = evaluate(FixedLogits(), forget=empty, retain=some, test=some)
    assert out["unlearning_accuracy"] is None and out["mia_score"] is None and out["mia_loss_score"] is None
    assert out["forget_count"] == 0
    assert out["test_accuracy"] == 1.0


def test_avg_gap_is_mean_absolute_difference_in_points() -> None:
    ref = {"unlearning_accuracy": 0.1, "mia_score": 0.2, "retain_accuracy": 1.0, "test_accuracy": 0.9}
    m = {"unlearning_accuracy": 0.0, "mia_score": 0.3, "retain_accuracy": 0.98, "test_accuracy": 0.9}
    assert avg_gap(m, ref) == pytest.approx((10 + 10 + 2 + 0) / 4)


def test_classwise_evaluate_splits_test_accuracy_by_forgotten_classes() -> None:
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 0, 2]), 3).float()
    test = _ds(logits, y, "t")
    out = evaluate(FixedLogits(), forget=test.subset([]), retain=test, test=test, forgotten_classes=[0])
    assert out["forgotten_class_test_accuracy"] == 0.5 and out["test_accuracy"] == 0.75
    assert (out["test_count"], out["forgotten_class_test_count"]) == (4, 2)


def test_forgotten_classes_are_the_training_classes_left_without_a_retained_sample() -> None:
    train = torch.tensor([0, 0, 1, 1, 2, 2])
    assert forgotten_classes(train, torch.tensor([1, 1, 2])) == [0]
    assert forgotten_classes(train, torch.tensor([1])) == [0, 2]
    assert forgotten_classes(train, torch.tensor([0, 1, 2])) is None  # random forgetting


def test_mia_balances_classes_when_retain_is_smaller_than_test() -> None:
    """9 members vs 20 non-members with identical confidences: without balancing, the SVC would call
    everything non-member (the majority); balanced, it must not call every member sample non-member."""
    y = torch.zeros(40, dtype=torch.long)
    same = _confident(y, torch.full((40,), 0.99))
    retain, test, forget = (
        _ds(same[:9], y[:9], "r"),
        _ds(same[9:29], y[9:29], "t"),
        _ds(same[29:], y[29:], "f"),
    )
    members, non_members = mia_sets(retain, test, seed=0)
    assert len(members) == len(non_members) == 9
    assert mia_efficacy(FixedLogits(), forget, retain, test) < 1.0


def test_evaluate_loss_attack_equals_the_standalone_attack(digits_model, digits_random10, digits) -> None:
    """``evaluate`` reads the loss attack off its confidence pass; it must agree with the attack run alone."""
    forget, retain = digits_random10
    out = evaluate(digits_model, forget=forget, retain=retain, test=digits[1])
    assert out["mia_loss_score"] == pytest.approx(loss_threshold_mia(digits_model, forget, retain, digits[1]))


def test_evaluate_classwise_leaves_the_class_out_of_ta_not_out_of_the_attack(digits_model, digits) -> None:
    train_ds, test = digits
    forget, retain = train_ds.split_by_ids(
        [train_ds.ids[i] for i in torch.nonzero(train_ds.y == 3).flatten().tolist()]
    )
    plain = evaluate(digits_model, forget=forget, retain=retain, test=test)
    out = evaluate(digits_model, forget=forget, retain=retain, test=test, forgotten_classes=[3])
    is_3 = torch.nonzero(test.y == 3).flatten()
    others = torch.nonzero(test.y != 3).flatten()
    assert out["test_accuracy"] == pytest.approx(accuracy(digits_model, test.subset(others)))
    assert out["forgotten_class_test_accuracy"] == pytest.approx(accuracy(digits_model, test.subset(is_3)))
    assert out["test_accuracy"] != plain["test_accuracy"]  # class 3 really left out of TA
    classwise = {"test_accuracy", "test_count", "forgotten_class_test_accuracy", "forgotten_class_test_count"}
    # a class that left is judged by its test rows, not by the forget-set excess
    classwise |= {"forget_accuracy_judged", "forget_accuracy_expected", "forget_accuracy_excess_se"}
    # The attacks' non-members are all of D_te either way: the same MIA as random-forgetting scoring.
    assert {k: v for k, v in out.items() if k not in classwise} == {
        k: v for k, v in plain.items() if k not in classwise
    }


def test_evaluate_retain_accuracy_on_a_sample_equals_accuracy_on_that_sample(
    digits_model, digits, digits_random10
) -> None:
    """RA reads the first rows of the pass it shares with the attack's members: it must be the accuracy of
    exactly the seeded sample, whichever of the two sets is the larger."""
    forget, retain = digits_random10
    for n in (50, 300, 5000):
        out = evaluate(digits_model, forget=forget, retain=retain, test=digits[1], retain_sample=n)
        gen = torch.Generator().manual_seed(0)
        sample = retain.subset(torch.randperm(len(retain), generator=gen)[: min(n, len(retain))])
        assert out["retain_count"] == len(sample)
        assert out["retain_accuracy"] == pytest.approx(accuracy(digits_model, sample))


def test_once_the_whole_training_set_is_forgotten_ra_and_the_attacks_are_none(digits_model, digits) -> None:
    """No retained sample is left to measure RA on or to train the attack with: None (JSON has no NaN),
    not an exception from the attack's classifier."""
    train_ds, test = digits
    out = evaluate(digits_model, forget=train_ds, retain=train_ds.subset([]), test=test)
    assert out["retain_accuracy"] is None and out["mia_score"] is None and out["mia_loss_score"] is None
    assert out["unlearning_accuracy"] is not None and out["retain_count"] == 0
    assert out["test_accuracy"] == pytest.approx(accuracy(digits_model, test))


def _evaluate_set_by_set(
    model, *, forget, retain, test, retain_sample=10_000, seed=0, forgotten_classes=None
):
    """``evaluate`` written out the plain way (the code path before each set was read once): one pass per
    set it reads, the RA sample, the attack's members and its non-members (a sample of D_te when D_r is
    the smaller) each scored on their own."""
    members, non_members = mia_sets(retain, test, seed)
    gen = torch.Generator().manual_seed(seed)
    ra_sample = retain.subset(torch.randperm(len(retain), generator=gen)[: min(retain_sample, len(retain))])
    te = score_set(model, test)
    out = {
        "unlearning_accuracy": None,
        "mia_score": None,
        "mia_loss_score": None,
        "retain_accuracy": float(score_set(model, ra_sample).correct.mean()) if len(ra_sample) else None,
        "test_accuracy": float(te.correct.mean()) if len(test) else None,
        "forget_count": len(forget),
        "retain_count": len(ra_sample),
        "test_count": len(test),
    }
    if len(forget):
        f = score_set(model, forget)
        out["unlearning_accuracy"] = 1.0 - float(f.correct.mean())
        gone = set(forgotten_classes or ())
        judged, expected, excess = accuracy_excess(
            f.correct, forget.y.numpy(), te.correct, test.y.numpy(), gone=gone
        )
        out["forget_accuracy_judged"] = judged
        out["forget_accuracy_expected"], out["forget_accuracy_excess_se"] = expected, excess
        if len(members):
            m_log, n_log = (
                score_set(model, members).log_confidence,
                score_set(model, non_members).log_confidence,
            )
            out["mia_score"] = mia_efficacy_from_confidence(
                np.exp(m_log), np.exp(n_log), np.exp(f.log_confidence)
            )
            out["mia_loss_score"] = loss_threshold_mia_from_loss(-m_log, -n_log, -f.log_confidence)
    if forgotten_classes is not None:
        gone = np.isin(test.y.numpy(), sorted(set(forgotten_classes)))
        out["test_accuracy"] = float(te.correct[~gone].mean())
        out["test_count"] = int((~gone).sum())
        out["forgotten_class_test_accuracy"] = float(te.correct[gone].mean())
        out["forgotten_class_test_count"] = int(gone.sum())
    return out


def _cases(digits, digits_random10):
    train_ds, test = digits
    forget, retain = digits_random10
    threes = [train_ds.ids[i] for i in torch.nonzero(train_ds.y == 3).flatten().tolist()]
    c_forget, c_retain = train_ds.split_by_ids(threes)
    small_retain = retain.subset(torch.arange(200))  # smaller than D_te: the non-members are a sample of it
    return {
        "random 10%": dict(forget=forget, retain=retain, test=test),
        "RA sample smaller than the members": dict(forget=forget, retain=retain, test=test, retain_sample=50),
        "D_r smaller than D_te": dict(forget=forget, retain=small_retain, test=test),
        "class-wise": dict(forget=c_forget, retain=c_retain, test=test, forgotten_classes=[3]),
        "nothing forgotten": dict(forget=forget.subset([]), retain=retain, test=test),
        "everything forgotten": dict(forget=train_ds, retain=train_ds.subset([]), test=test),
    }


def test_evaluate_reading_each_set_once_gives_exactly_the_set_by_set_numbers(
    digits_model, digits, digits_random10
) -> None:
    """Merging the passes changes no number, not even in the last bit: every case evaluate branches on."""
    for name, kw in _cases(digits, digits_random10).items():
        assert evaluate(digits_model, **kw) == _evaluate_set_by_set(digits_model, **kw), name


def test_evaluate_on_kept_test_scores_equals_evaluate_reading_the_test_set(
    digits_model, digits, digits_random10
) -> None:
    """A version's kept scores on D_te stand in for the test pass: the same numbers in every case."""
    for name, kw in _cases(digits, digits_random10).items():
        kept = score_set(digits_model, kw["test"])
        assert evaluate(digits_model, **kw, test_scores=kept) == evaluate(digits_model, **kw), name


def test_evaluate_refuses_kept_test_scores_of_another_set(digits_model, digits, digits_random10) -> None:
    forget, retain = digits_random10
    test = digits[1]
    kept = score_set(digits_model, test.subset(torch.arange(len(test) - 1)))
    with pytest.raises(ValueError, match="test_scores"):
        evaluate(digits_model, forget=forget, retain=retain, test=test, test_scores=kept)


def test_evaluate_takes_the_test_side_from_kept_scores_without_reading_the_test_set(
    digits_model, digits, digits_random10
) -> None:
    """Kept scores really replace the test pass (the caller must key them by the checkpoint and the
    data, as ``workers.scores`` does): another model's scores give that model's TA."""
    forget, retain = digits_random10
    test = digits[1]
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    kept = score_set(other, test)
    mine = evaluate(digits_model, forget=forget, retain=retain, test=test)
    borrowed = evaluate(digits_model, forget=forget, retain=retain, test=test, test_scores=kept)
    assert borrowed["test_accuracy"] == float(kept.correct.mean()) != mine["test_accuracy"]


def test_a_forget_set_scored_like_unseen_data_of_its_classes_is_rarely_three_errors_above_it() -> None:
    """A retrained model never read D_f: its rows score like unseen rows of their classes, whatever the
    class mix. Drawn so (a 95% class and a 60% one, D_f leaning on the easy one), the excess is centred on 0
    and beyond 3 standard errors in well under 1% of 2,000 deletions: the default gate's false refusals."""
    rng = np.random.default_rng(0)
    acc = np.array([0.95, 0.6])
    test_y = np.repeat([0, 1], [60, 40])
    forget_y = np.repeat([0, 1], [45, 5])  # mostly the easy class: above the overall test accuracy
    excess = np.array([
        accuracy_excess(rng.random(50) < acc[forget_y], forget_y, rng.random(100) < acc[test_y], test_y)[2]
        for _ in range(2000)
    ])  # fmt: skip
    assert abs(excess.mean()) < 0.15 and (excess > 3).mean() < 0.01


def test_a_forget_set_the_model_still_recognises_is_many_errors_above_unseen_data() -> None:
    """A memorising model that forgot nothing (every D_f row right, unseen rows 80% right) is far above;
    the same on 20 rows of a 97% model is not told apart from chance, and a class every test row gets right
    leaves a fully recognised D_f of it within noise."""
    test_y = np.tile(np.arange(10), 50)
    test_correct = (np.arange(500) % 5 != 0).astype(np.float32)  # 80% in every class
    forget_y = np.tile(np.arange(10), 20)
    judged, expected, excess = accuracy_excess(np.ones(200), forget_y, test_correct, test_y)
    assert judged == 1.0 and expected == pytest.approx(0.8) and excess > 6
    easy = np.ones(500, dtype=np.float32)
    assert accuracy_excess(np.ones(20), forget_y[:20], easy, test_y)[2] < 1
    assert accuracy_excess(np.zeros(200), forget_y, test_correct, test_y)[2] < -6  # forgotten past unseen


def test_the_excess_leaves_out_rows_it_cannot_judge_or_that_are_judged_otherwise() -> None:
    """Review findings: flagged rows, whose label a retrain does not predict, pulled the sum down and hid
    unforgotten ones; a class with no test row was judged at the overall rate; a class taken whole, pooled
    in, hid a no-op on the rest behind its own large fall (its test rows judge it instead)."""
    test_y = np.tile(np.arange(10), 50)
    test_correct = np.ones(500, dtype=np.float32)
    assert accuracy_excess(np.ones(50), np.full(50, 3), test_correct, test_y, gone={3}) == (None, None, None)
    forget_y, correct = np.tile(np.arange(10), 20), np.ones(200)
    flagged = np.zeros(200, dtype=bool)
    flagged[100:] = True
    correct[100:] = 0.0  # moved off their wrong labels, as asked
    test_80 = (np.arange(500) % 5 != 0).astype(np.float32)
    judged, _, excess = accuracy_excess(correct, forget_y, test_80, test_y, skip=flagged)
    assert judged == 1.0 and excess > 4  # the rest still known
    assert accuracy_excess(np.ones(30), np.full(30, 11), test_80, test_y) == (None, None, None)  # no test row
