"""The held-out bound of UGradSL's forget term: which forget samples are still pushed."""

import copy
import math

import pytest
import torch

from models.datasets import SampleDataset
from models.hooks import Hooks
from models.metrics import avg_gap, evaluate, per_sample_loss
from models.training import DIGITS_RECIPE
from models.unlearning import run_method
from models.unlearning.bounds import (
    SKEW_ALPHA,
    HeldoutBound,
    _shifted,
    class_skew,
    heldout_bound,
    loss_rank_skew,
)


def _bound(retained: list[bool]) -> HeldoutBound:
    return HeldoutBound(torch.arange(1, 11) / 10, torch.tensor(retained))  # quantiles 0.1 .. 1.0


def _hardest_after(model, digits, split, params: dict) -> float:
    """D_f's largest loss after a default UGradSL+ run with ``params`` on the digits model."""
    forget, retain = split
    out = run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, params, heldout=digits[1])
    return float(per_sample_loss(out, forget).max())


def test_a_forget_sample_is_live_while_its_loss_is_below_the_heldout_loss_of_its_rank() -> None:
    loss = torch.tensor([0.05, 2.0, 0.5, 0.01])  # ranks 1, 3, 2, 0 of a batch of 4
    y = torch.zeros(4, dtype=torch.long)
    correct = torch.ones(4, dtype=torch.bool)
    # rank r reads quantile index floor((r + 0.5) * 10 / 4): ranks 0..3 -> 0.2, 0.4, 0.7, 0.9
    live = _bound([True, True]).live(loss, y, correct)
    assert live.tolist() == [True, False, True, True]


def test_a_rank_reads_the_heldout_midpoint_the_ends_or_its_bins_mean() -> None:
    """Midpoints never reach the top 1/(2B) of held-out losses, the tail a 98%-accurate model
    misclassifies; ``ends`` spreads the ranks from the lowest held-out loss to the highest, and ``mean``
    gives each rank the mean of its bin, so a batch's targets average to the held-out mean."""
    loss = torch.tensor([0.05, 2.0, 0.5, 0.01])  # ranks 1, 3, 2, 0
    mid, ends, mean = _bound([True]), _bound([True]), _bound([True])
    ends.by, mean.by = "ends", "mean"
    assert mid.targets(loss).tolist() == pytest.approx([0.4, 0.9, 0.7, 0.2])
    # rank r reads index round(r * 9 / 3): 0, 3, 6, 9 -> 0.1, 0.4, 0.7, 1.0
    assert ends.targets(loss).tolist() == pytest.approx([0.4, 1.0, 0.7, 0.1])
    assert ends.targets(torch.tensor([0.3])).tolist() == pytest.approx([0.1])  # a batch of one
    # bins of 10 losses over 4 ranks: indices [0, 2), [2, 5), [5, 7), [7, 10)
    assert mean.targets(loss).tolist() == pytest.approx([0.4, 0.9, 0.65, 0.15])
    skewed = HeldoutBound(torch.tensor([0.0] * 127 + [9.0]), torch.tensor([True]))
    skewed.by = "mean"
    batch = torch.arange(32.0)  # bins of 4: the targets average to the held-out mean, tail included
    assert float(skewed.targets(batch).mean()) == pytest.approx(float(skewed.quantiles.mean()))
    skewed.by = "midpoint"
    assert float(skewed.targets(batch).max()) == 0.0  # no rank of 32 reaches the top 1 of 128
    small = _bound([True])  # fewer held-out losses than ranks: each rank still reads one
    small.quantiles, small.by = torch.tensor([0.1, 0.2]), "mean"
    assert small.targets(batch[:5]).tolist() == pytest.approx([0.1, 0.1, 0.1, 0.2, 0.2])


def test_jittered_ranks_read_a_place_in_their_bin_fixed_per_row_reaching_the_top_bins_tail() -> None:
    """``jitter``: rank r of B reads quantile (r + u_i) / B with u_i drawn once per forget row, so a row in
    the top bin may aim at the held-out maximum, which no midpoint reaches; without rows (or offsets) a
    rank reads its midpoint, as before."""
    loss = torch.tensor([0.05, 2.0, 0.5, 0.01])  # ranks 1, 3, 2, 0 of a batch of 4
    bound = _bound([True])
    bound.by = "jitter"
    bound.offsets = torch.tensor([0.0, 0.99, 0.5, 0.1, 0.9])  # rows 0..4 of D_f
    rows = torch.tensor([0, 1, 3, 4])
    # index floor((r + u) * 10 / 4): rank 1 u 0 -> 2, rank 3 u .99 -> 9, rank 2 u .1 -> 5, rank 0 u .9 -> 2
    assert bound.targets(loss, rows).tolist() == pytest.approx([0.3, 1.0, 0.6, 0.3])
    assert bound.targets(loss).tolist() == pytest.approx([0.4, 0.9, 0.7, 0.2])  # no rows: midpoints
    bound.jitter(1000, seed=7)
    again = _bound([True])
    again.jitter(1000, seed=7)
    assert bound.offsets is not None and again.offsets is not None
    assert torch.equal(bound.offsets, again.offsets)  # seeded: a rerun aims where the run did
    assert 0.45 < float(bound.offsets.mean()) < 0.55 and float(bound.offsets.max()) < 1.0


def test_jittered_targets_reach_a_run(digits_model, digits, digits_random10) -> None:
    """A run at ``bound_targets="jitter"`` draws one offset per forget row it reads and aims its hardest
    rows further than midpoints do (the top bin's tail)."""

    def hardest(by: str) -> float:
        return _hardest_after(digits_model, digits, digits_random10, {"bound_targets": by})

    assert hardest("jitter") > hardest("midpoint")  # measured: 4.4 against 1.3


def test_ranks_among_the_forget_set_reach_the_heldout_tail_and_follow_the_latest_losses() -> None:
    """Within a batch of 4 no rank reads above the 0.9 quantile; ranked among 20 forget samples, the one
    with the highest loss reads the held-out maximum, and a sample's rank moves with its latest loss."""
    bound = _bound([True])
    bound.ranks = "forget"
    bound.track(torch.linspace(0.0, 0.19, 20))  # rows 0..19, losses 0.00 .. 0.19
    rows, loss = torch.tensor([0, 18]), bound.latest[[0, 18]].clone()
    # rank r of 20 reads quantile index floor((r + 0.5) * 10 / 20): ranks 0, 18 -> 0.1, 1.0
    assert bound.targets(loss, rows).tolist() == pytest.approx([0.1, 1.0])
    assert bound.targets(loss).tolist() == pytest.approx([0.3, 0.8])  # without rows: ranks 0, 1 of 2
    bound.observe(torch.tensor([0]), torch.tensor([5.0]))  # row 0 was pushed above every other row
    loss[0] = 5.0
    assert bound.targets(loss, rows).tolist() == pytest.approx([1.0, 0.9])  # ranks 19 and 17 now
    live = bound.live(loss, torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.bool), rows)
    assert live.tolist() == [False, True]  # 5.0 is above the held-out maximum; 0.18 below its 0.9
    bound.ranks = "both"  # the larger of the batch's target (ranks 0, 1 of 2: 0.3, 0.8) and D_f's
    low = torch.tensor([0.0, 0.01])  # D_f's lowest: its targets read 0.1
    assert bound.targets(low, torch.tensor([1, 2])).tolist() == pytest.approx([0.3, 0.8])
    assert bound.targets(loss, rows).tolist() == pytest.approx([1.0, 0.9])


def test_ranks_in_the_retain_set_aim_each_row_at_the_heldout_loss_of_its_own_place_among_d_r() -> None:
    """``ranks="train"``: a forget row the model finds as easy as its easiest retained rows reads the lowest
    held-out losses, one as hard as its hardest the tail, whatever batch it comes in, and the targets are
    fixed before the run (its losses do not move them). Batch ranks spread every batch over the whole
    held-out range, so a deletion of easy rows was pushed onto the tail (a probe: TA -9 points)."""
    model = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [-1.0]]))  # class 0's margin is 2x: a larger x is easier
    margins = torch.linspace(0.1, 4.0, 40).unsqueeze(1)
    retain = SampleDataset(margins, torch.zeros(40, dtype=torch.long), [f"r{i}" for i in range(40)])
    forget = SampleDataset(
        torch.tensor([[5.0], [0.05], [2.0]]), torch.zeros(3, dtype=torch.long), ["e", "h", "m"]
    )
    bound = _bound([True])
    bound.ranks = "train"
    bound.rank_in_retain(model, forget, retain, seed=0)
    assert bound.in_retain_rank["e"] == 0.0 and bound.in_retain_rank["h"] == 1.0  # rank 0: the easiest
    assert bound.in_retain_rank["m"] == pytest.approx(0.5, abs=0.05)
    assert bound.fix(["h", "m", "e"]).tolist() == pytest.approx([1.0, 0.6, 0.1])
    assert bound.fix(["x"]).tolist() == pytest.approx([0.6])  # a row never placed: the middle
    bound.fix(["m", "e", "h"])  # the run's own order
    loss = torch.tensor([9.0, 0.0])  # whatever they read now
    assert bound.targets(loss, torch.tensor([1, 2])).tolist() == pytest.approx([0.1, 1.0])
    assert bound.targets(loss).tolist() == pytest.approx([0.8, 0.3])  # no rows: ranks within the batch


def test_the_default_aims_a_deletion_of_typical_rows_at_their_own_targets_and_pushes_them_less(
    digits_model, digits
) -> None:
    """The rows nearest their class's mean are ones the model finds easy: the default reads them as
    standing apart from D_r (its record says so), aims each at the low held-out loss of its own place,
    and pushes them less far than batch ranks, which aim every batch at the whole table."""
    train_ds, test_ds = digits
    x = train_ds.x.flatten(1)
    near = []
    for c in range(10):
        rows = torch.nonzero(train_ds.y == c).flatten()
        near.append(rows[(x[rows] - x[rows].mean(0)).norm(dim=1).argsort()[:10]])
    forget, retain = train_ds.split_by_ids([train_ds.ids[i] for i in torch.cat(near).tolist()])
    plans: dict[str, dict] = {}
    pushed: dict[str, float] = {}
    for name, params in (("batch", {"bound_ranks": "batch"}), ("default", {})):
        seen: list[dict] = []
        out = run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, params,
                         Hooks(on_plan=seen.append), heldout=test_ds)  # fmt: skip
        plans[name], pushed[name] = seen[0], float(per_sample_loss(out, forget).mean())
    assert plans["default"]["ranked_in_retain"] is True and plans["default"]["loss_rank_skew"] < 1e-6
    assert "loss_rank_skew" not in plans["batch"]
    assert pushed["default"] < pushed["batch"], pushed


def test_a_deletion_of_the_rows_the_model_finds_easiest_stands_apart_and_a_random_or_class_drawn_one_does_not(
    digits_model, digits
) -> None:
    """``loss_rank_skew``: D_f's losses placed among D_r's of their classes. A random tenth, half of a class
    and 90% of a class read as random draws (their class mix alone is not a skew of where rows lie); the
    tenth of each class nearest its mean (the model's easiest rows) and the farthest stand far apart."""
    train_ds, _ = digits
    losses = torch.as_tensor(per_sample_loss(digits_model, train_ds))
    x = train_ds.x.flatten(1)

    def skew(rows: torch.Tensor) -> float:
        out = torch.ones(len(train_ds), dtype=torch.bool)
        out[rows] = False
        return loss_rank_skew(losses[rows], train_ds.y[rows], losses[out], train_ds.y[out], seed=0)

    gen = torch.Generator().manual_seed(3)
    of_0 = torch.nonzero(train_ds.y == 0).flatten()
    drawn = {
        "random": torch.randperm(len(train_ds), generator=gen)[: len(train_ds) // 10],
        "half of a class": of_0[torch.randperm(len(of_0), generator=gen)[: len(of_0) // 2]],
        "most of a class": of_0[torch.randperm(len(of_0), generator=gen)[: int(0.9 * len(of_0))]],
    }
    for what, rows in drawn.items():
        assert skew(rows) > SKEW_ALPHA, what
    near, far = [], []
    for c in range(10):
        rows = torch.nonzero(train_ds.y == c).flatten()
        order = (x[rows] - x[rows].mean(0)).norm(dim=1).argsort()
        near.append(rows[order[:15]])
        far.append(rows[order[-15:]])
    assert skew(torch.cat(near)) < 1e-6 and skew(torch.cat(far)) < 1e-6


def test_ranks_in_the_retain_set_only_where_skewed_leave_a_random_deletion_to_batch_ranks(
    digits_model, digits, digits_random10
) -> None:
    """``train_when_skewed`` runs a random deletion exactly as batch ranks do (the same weights)."""
    forget, retain = digits_random10
    runs = [
        run_method(
            "ugradsl_plus",
            copy.deepcopy(digits_model),
            forget,
            retain,
            {"bound_ranks": ranks},
            heldout=digits[1],
        )  # fmt: skip
        for ranks in ("batch", "train_when_skewed")
    ]
    for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    of_0 = torch.nonzero(digits[0].y == 0).flatten()  # 90% of a class: the table is read for its class
    most, rest = digits[0].split_by_ids([digits[0].ids[i] for i in of_0[: int(0.9 * len(of_0))].tolist()])
    plans: list[dict] = []
    run_method("ugradsl_plus", copy.deepcopy(digits_model), most, rest, {"bound_ranks": "train"},
               Hooks(on_plan=plans.append), heldout=digits[1])  # fmt: skip
    assert plans and all("loss_rank_skew" not in p for p in plans), plans
    plans = []
    flagged = torch.ones(len(forget), dtype=torch.bool)  # rows moved to their neighbours' class: batch ranks
    run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, {"bound_ranks": "train"},
               Hooks(on_plan=plans.append), heldout=digits[1], mislabeled=flagged)  # fmt: skip
    assert plans and all("loss_rank_skew" not in p for p in plans), plans


def test_ranks_among_the_forget_set_push_its_hardest_samples_further(
    digits_model, digits, digits_random10
) -> None:
    """A run ranking among all of D_f aims its hardest samples at the held-out tail, which batch ranks never
    reach (measured on digits: D_f's largest loss 3.7 against 2.0; the held-out maximum is 5.8)."""

    def hardest(ranks: str) -> float:
        return _hardest_after(digits_model, digits, digits_random10, {"bound_ranks": ranks})

    assert hardest("forget") > hardest("batch")


def test_the_targets_choice_reaches_the_bound_a_run_uses(digits_model, digits, digits_random10) -> None:
    from models.unlearning.methods import _bound as bound_of
    from models.unlearning.params import parse_params

    forget, retain = digits_random10
    for by, ranks in (("midpoint", "forget"), ("ends", "batch"), ("mean", "forget"), ("jitter", "batch")):
        params = parse_params("ugradsl_plus", {"bound_targets": by, "bound_ranks": ranks})
        bound = bound_of(digits_model, forget, retain, params, digits[1])
        assert bound is not None and (bound.by, bound.ranks) == (by, ranks)
    defaults = parse_params("ugradsl_plus", {})
    assert (defaults.bound_targets, defaults.bound_ranks) == ("midpoint", "train_when_skewed")
    assert parse_params("ugradsl", {}).bound_ranks == "batch"  # the paper's method keeps its ranks
    assert (defaults.bound_prior, defaults.bound_match, defaults.bound_when) == ("retained", 1.0, "skewed")
    assert parse_params("ugradsl", {}).bound_prior == "trained"  # opt-in beside UGradSL+
    of_3 = forget.subset(torch.nonzero(forget.y == 3).flatten())
    params = parse_params("ugradsl_plus", {"bound_when": "always", "bound_match_rows": 0})
    bound = bound_of(digits_model, of_3, retain, params, digits[1])
    expected = heldout_bound(digits_model, digits[1], retain, 0, of_3.y, prior="retained", match=1.0)
    assert bound is not None and expected is not None
    torch.testing.assert_close(bound.quantiles, expected.quantiles)
    assert len(bound.quantiles) == int((digits[1].y == 3).sum())
    for bad in ({"bound_targets": "max"}, {"bound_ranks": "epoch"}, {"bound_prior": "uniform"}):
        with pytest.raises(ValueError):
            parse_params("ugradsl_plus", bad)


def test_a_forget_sample_whose_class_left_the_retain_set_is_live_while_correct() -> None:
    loss = torch.tensor([5.0, 5.0, 0.0, 0.0])  # far above / below every held-out quantile
    y = torch.tensor([1, 1, 1, 0])
    correct = torch.tensor([True, False, False, True])
    live = _bound([True, False]).live(loss, y, correct)
    assert live.tolist() == [True, False, False, True]  # class 1 follows correctness; class 0 its loss


def test_heldout_bound_reads_the_models_sorted_heldout_losses_and_the_retained_classes(
    digits_model, digits, digits_random10
) -> None:
    forget, retain = digits_random10
    test = digits[1]
    without_class_3 = retain.subset(torch.nonzero(retain.y != 3).flatten())
    bound = heldout_bound(digits_model, test, without_class_3)
    assert bound is not None
    losses = torch.from_numpy(per_sample_loss(digits_model, test))
    # class 3 has no retain row: its held-out rows are no forget row's target, and leave the table
    torch.testing.assert_close(bound.quantiles, losses[test.y != 3].sort().values)
    # each class's share of held-out rows the model gets wrong (loss above ln 2), which retain_match reads
    wrong = losses > math.log(2)
    expected_error = torch.stack([wrong[test.y == c].double().mean() * (c != 3) for c in range(10)])
    assert bound.class_error is not None and wrong.any()
    torch.testing.assert_close(bound.class_error, expected_error)
    assert bound.retained.tolist() == [k != 3 for k in range(10)]
    assert heldout_bound(digits_model, test.subset([]), retain) is None


def test_the_heldout_bound_refuses_to_run_without_heldout_data(digits_model, digits, digits_random10) -> None:
    """Falling back to another bound silently would change the method under the caller's feet."""
    forget, retain = digits_random10
    with pytest.raises(ValueError, match="heldout=test_set"):
        run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, {"bound_by": "heldout"})


def test_an_empty_heldout_set_bounds_by_correctness(digits_model, digits, digits_random10) -> None:
    forget, retain = digits_random10
    empty = digits[1].subset([])
    runs = [
        run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, p, heldout=empty)
        for p in ({"epochs": 0.3, "bound_by": "heldout"}, {"epochs": 0.3, "bound_by": "correct"})
    ]
    for (k, a), (_, b) in zip(runs[0].state_dict().items(), runs[1].state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.slow
def test_the_heldout_bound_lands_closer_to_retraining_than_correctness_on_a_generalising_model(
    digits_model, digits, digits_random10
) -> None:
    """Digits' retrained model still classifies ~98% of a random forget set correctly: pushing every
    forget sample until it is misclassified overshoots (measured: gap 4-7.5 points, worse than doing
    nothing), pushing it to held-out losses does not (0.4-1.3)."""
    forget, retain = digits_random10
    test: SampleDataset = digits[1]
    reference = run_method("retrain", copy.deepcopy(digits_model), forget, retain, DIGITS_RECIPE.to_dict())
    ref = evaluate(reference, forget=forget, retain=retain, test=test)

    def gap(bound_by: str) -> float:
        model = run_method(
            "ugradsl_plus", copy.deepcopy(digits_model), forget, retain, {"bound_by": bound_by}, heldout=test
        )
        return avg_gap(evaluate(model, forget=forget, retain=retain, test=test), ref)

    heldout, correct = gap("heldout"), gap("correct")
    assert heldout < correct
    assert heldout < avg_gap(evaluate(digits_model, forget=forget, retain=retain, test=test), ref)


def test_under_the_retained_prior_a_deletion_that_keeps_every_class_share_reads_the_trained_table(
    digits_model, digits, digits_random10
) -> None:
    """Taking the same share of every class moves every logit by one constant, which no softmax sees."""
    _, retain = digits_random10
    test = digits[1]
    trained = heldout_bound(digits_model, test, retain)
    shifted = heldout_bound(digits_model, test, retain, forget_y=retain.y, prior="retained")  # half of each
    assert trained is not None and shifted is not None
    torch.testing.assert_close(shifted.quantiles, trained.quantiles)


def test_under_the_retained_prior_most_of_a_class_reads_as_a_model_that_saw_few_of_it(
    digits_model, digits
) -> None:
    train_ds, test = digits
    of_0 = torch.nonzero(train_ds.y == 0).flatten()
    gone = torch.isin(torch.arange(len(train_ds)), of_0[: int(0.9 * len(of_0))])
    forget, retain = (
        train_ds.subset(torch.nonzero(gone).flatten()),
        train_ds.subset(torch.nonzero(~gone).flatten()),
    )
    bound = heldout_bound(digits_model, test, retain, forget_y=forget.y, prior="retained")
    assert bound is not None and bound.class_error is not None
    with torch.no_grad():
        logits = digits_model.eval()(test.x)
    kept = torch.bincount(retain.y, minlength=10).double()
    shift = (kept / (kept + torch.bincount(forget.y, minlength=10).double())).log().float()
    expected = torch.nn.functional.cross_entropy(logits + shift, test.y, reduction="none")
    torch.testing.assert_close(bound.quantiles, expected.sort().values)
    plain = torch.nn.functional.cross_entropy(logits, test.y, reduction="none")
    assert bool((expected[test.y == 0] > plain[test.y == 0]).all())  # class 0 is less readily predicted
    assert bool((expected[test.y != 0] <= plain[test.y != 0] + 1e-6).all())  # the others more
    # a class with no training row left takes no probability, and its held-out rows leave the table
    all_of_0 = train_ds.y == 0
    without_0 = train_ds.subset(torch.nonzero(~all_of_0).flatten())
    bound = heldout_bound(digits_model, test, without_0, forget_y=train_ds.y[all_of_0], prior="retained")
    assert bound is not None and len(bound.quantiles) == int((test.y != 0).sum())
    assert bool(bound.quantiles.isfinite().all())


def test_a_matched_heldout_table_stands_d_fs_classes_more_often(
    digits_model, digits, digits_random10
) -> None:
    _, retain = digits_random10
    test = digits[1]
    only_3 = torch.full((20,), 3)
    matched = heldout_bound(digits_model, test, retain, forget_y=only_3, match=1.0)
    assert matched is not None
    losses = torch.from_numpy(per_sample_loss(digits_model, test)).float()
    torch.testing.assert_close(matched.quantiles, losses[test.y == 3].sort().values)  # only class 3's rows
    assert (
        heldout_bound(digits_model, test, retain, forget_y=only_3, match=0.0).quantiles.shape == losses.shape
    )


def test_only_a_deletion_drawn_from_few_classes_reshapes_the_table_when_skewed(
    digits_model, digits, digits_random10
) -> None:
    forget, retain = digits_random10
    test = digits[1]
    assert class_skew(retain.y, forget.y) > SKEW_ALPHA  # a random draw's mix
    assert class_skew(retain.y, forget.y[:0]) == 1.0
    plain = heldout_bound(digits_model, test, retain)
    assert plain is not None and plain.read == {}
    reshape = {"prior": "retained", "match": 1.0}
    random = heldout_bound(digits_model, test, retain, forget_y=forget.y, when="skewed", **reshape)  # type: ignore[arg-type]
    assert random is not None and random.read == {}
    torch.testing.assert_close(random.quantiles, plain.quantiles)
    of_3 = forget.y[forget.y == 3]
    assert class_skew(retain.y, of_3) < 1e-6
    skewed = heldout_bound(digits_model, test, retain, forget_y=of_3, when="skewed", **reshape)  # type: ignore[arg-type]
    assert skewed is not None and skewed.read["prior"] == "retained" and skewed.read["match"] == 1.0
    assert len(skewed.quantiles) == int((test.y == 3).sum())


def test_a_run_records_a_reshaped_heldout_table_in_its_plan(digits_model, digits, digits_random10) -> None:
    from models.hooks import Hooks

    forget, retain = digits_random10
    of_3 = forget.subset(torch.nonzero(forget.y == 3).flatten())
    plans: list[dict] = []
    for f in (of_3, forget):  # the defaults: the retained prior, matched, shrunk by 128 rows, when skewed
        hooks = Hooks(on_plan=plans.append)
        run_method(
            "ugradsl_plus", copy.deepcopy(digits_model), f, retain, {"epochs": 0.2}, hooks, heldout=digits[1]
        )
    table = plans[0]["heldout_table"]
    n = int(
        (digits[1].y == 3).sum()
    )  # held-out rows of D_f's one class: the share is shrunk to n / (n + 128)
    assert table["prior"] == "retained" and table["match"] == pytest.approx(n / (n + 128))
    assert table["class_skew"] < SKEW_ALPHA
    assert "heldout_table" not in plans[1]  # a random deletion reads the model's own held-out losses


def test_a_deletion_that_empties_a_class_matches_the_table_to_the_classes_that_stay(
    digits_model, digits
) -> None:
    """All of class 0 and a few 3s: the 0s are no forget row's target, so the 3s decide the table's mix
    and its shrinking; a class no training row ever had keeps its logit, and its held-out rows leave
    the table as a class with no retain row left (an earlier job's) does."""
    train_ds, test = digits
    threes = torch.nonzero(train_ds.y == 3).flatten()[:20]
    gone = (train_ds.y == 0) | torch.isin(torch.arange(len(train_ds)), threes)
    no_9 = ~gone & (train_ds.y != 9)  # class 9 is in neither D_r nor D_f: never trained on
    forget, retain = (
        train_ds.subset(torch.nonzero(gone).flatten()),
        train_ds.subset(torch.nonzero(no_9).flatten()),
    )
    bound = heldout_bound(
        digits_model, test, retain, forget_y=forget.y, prior="retained", match=1.0, match_rows=128
    )
    n_3 = int((test.y == 3).sum())
    assert bound is not None and bound.read["match"] == pytest.approx(n_3 / (n_3 + 128))
    unshrunk = heldout_bound(digits_model, test, retain, forget_y=forget.y, prior="retained", match=1.0)
    assert unshrunk is not None and len(unshrunk.quantiles) == n_3  # only the 3s: D_f's class that stays
    shifted = heldout_bound(digits_model, test, retain, forget_y=forget.y, prior="retained")
    assert shifted is not None and len(shifted.quantiles) == int(((test.y != 0) & (test.y != 9)).sum())
    assert bool(shifted.quantiles.isfinite().all())


def test_refreshing_keeps_a_reshaped_table(digits_model, digits, digits_random10) -> None:
    """``select_refresh`` measures the model's own losses on the held-out mix: what a reshaping replaced."""
    forget, retain = digits_random10
    of_3 = forget.y[forget.y == 3]
    skewed = heldout_bound(digits_model, digits[1], retain, forget_y=of_3, prior="retained", match=1.0)
    plain = heldout_bound(digits_model, digits[1], retain)
    assert skewed is not None and plain is not None
    before = skewed.quantiles.clone()
    skewed.refresh(torch.zeros(5))
    plain.refresh(torch.zeros(5))
    assert torch.equal(skewed.quantiles, before) and torch.equal(plain.quantiles, torch.zeros(5))


def test_the_shrink_of_a_matched_table_eases_as_most_of_d_fs_classes_leave() -> None:
    """``match_stayed``: half a class or less deleted keeps the shrink; 90% of one takes 1/25 of it, so a
    class mostly deleted is read off its own held-out rows (a client's 90% of a 2% class: a retrain
    forgot 73% of it, the run 23%, its table mostly the other classes' losses)."""
    from models.unlearning.bounds import _stayed_share

    retain_y = torch.tensor([0] * 50 + [1] * 10 + [2] * 100)
    assert _stayed_share(retain_y, torch.tensor([0] * 50)) == pytest.approx(0.5)
    assert _stayed_share(retain_y, torch.tensor([1] * 90)) == pytest.approx(0.1)
    assert _stayed_share(retain_y, torch.tensor([3] * 30 + [1] * 90)) == pytest.approx(0.1)  # 3 left whole
    assert _stayed_share(retain_y, torch.tensor([3] * 30)) == 1.0  # only a class taken whole: no table


def test_a_mostly_deleted_class_reads_its_own_heldout_rows_with_match_stayed(
    digits_model, digits, digits_random10
) -> None:
    _, retain = digits_random10
    test = digits[1]
    threes = torch.nonzero(retain.y == 3).flatten()
    kept = retain.subset(torch.cat([torch.nonzero(retain.y != 3).flatten(), threes[:10]]))
    most_of_3 = torch.full((len(threes) - 10,), 3)

    def table(**how: object) -> torch.Tensor:
        bound = heldout_bound(digits_model, test, kept, forget_y=most_of_3, match=1.0, **how)
        assert bound is not None
        return torch.quantile(bound.quantiles, torch.linspace(0.05, 0.95, 19))

    own = table(match_rows=0)  # class 3's rows alone
    shrunk, eased = table(match_rows=128), table(match_rows=128, match_stayed=True)
    assert (eased - own).abs().mean() < (shrunk - own).abs().mean()


def test_the_prior_power_shifts_only_classes_of_which_less_than_half_stays() -> None:
    """power 1 is Bayes' rule (the logits as before, bit for bit); above 1, a class mostly deleted reads
    further off, half a class or more stays as Bayes has it, and a class with none left stays at -inf
    (0·-inf had made every logit NaN)."""
    logits = torch.zeros(2, 4)
    kept = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)  # class 3 has no training row left
    gone = torch.tensor([1] * 5 + [2] * 9 + [3] * 4)  # stays: 1, 1/2, 1/10, 0
    bayes = _shifted(logits, kept, gone)
    assert torch.equal(bayes, _shifted(logits, kept, gone, 1.0))
    assert bayes[0, :3].tolist() == pytest.approx([0.0, math.log(0.5), math.log(0.1)])
    steeper = _shifted(logits, kept, gone, 3.0)
    assert steeper[0, :2].tolist() == pytest.approx(bayes[0, :2].tolist())
    assert steeper[0, 2].item() == pytest.approx(math.log(0.1) + 2 * math.log(0.2))
    assert not steeper.isnan().any() and steeper[0, 3].item() == -math.inf
