"""The quality bench's protocol arithmetic: gap closed, and the share of the closable gap (above the noise
floor of a second exact retrain) that a method closes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench.quality import closable_gap_closed, forget_split, gap_closed, markdown, pooled_closable
from models.datasets import SampleDataset


def record(gap: float, original_gap: float, floor: float) -> dict[str, float]:
    return {"gap": gap, "original_gap": original_gap, "floor": floor}


def test_closing_the_gap_down_to_the_floor_closes_all_of_the_closable_gap() -> None:
    r = record(gap=0.5, original_gap=2.5, floor=0.5)
    assert gap_closed(r) == pytest.approx(0.8)
    assert closable_gap_closed(r) == pytest.approx(1.0)


def test_the_closable_share_is_the_plain_share_when_retrains_agree_exactly() -> None:
    r = record(gap=1.0, original_gap=4.0, floor=0.0)
    assert closable_gap_closed(r) == pytest.approx(gap_closed(r)) == pytest.approx(0.75)


def test_nothing_is_closable_when_the_original_is_already_within_the_floor() -> None:
    assert closable_gap_closed(record(gap=0.3, original_gap=0.4, floor=0.6)) == 0.0


def test_pooled_the_seeds_weigh_by_the_gap_each_had_to_close() -> None:
    # one seed whose retrains nearly agree: its own share is 10x, and swamps a mean of shares
    rs = [record(gap=0.1, original_gap=0.6, floor=0.55), record(gap=1.5, original_gap=2.0, floor=0.0)]
    assert [closable_gap_closed(r) for r in rs] == pytest.approx([10.0, 0.25])
    assert pooled_closable(rs) == pytest.approx((0.5 + 0.5) / (0.05 + 2.0))


def test_the_table_times_a_method_against_both_exact_retrains_and_shows_how_far_apart_they_ran() -> None:
    base = {
        "setting": "s",
        "seed": 1,
        "scenario": "random",
        "floor": 0.2,
        "mia_loss": 0.5,
        **dict.fromkeys(("unlearning_accuracy", "mia_score", "retain_accuracy", "test_accuracy"), 0.9),
    }
    records = [
        {**base, "row": "retrain", "rte_s": 90.0, "rte2_s": 110.0, "gap": 0.0},
        {**base, "row": "m", "rte_s": 5.0, "retrain_s": 100.0, "gap": 0.4, "original_gap": 1.0},
    ]  # fmt: skip
    table = markdown(records, ["s"], ["random"])
    assert "1.000 (two runs 20.0 ± 0.0% apart)" in table
    assert "| 0.050 ± 0.000 |" in table and "(pooled 75%)" in table  # one seed: no interval


def test_the_table_heads_each_scenario_with_what_it_deleted() -> None:
    metrics = ("unlearning_accuracy", "mia_score", "retain_accuracy", "test_accuracy")
    base = {"setting": "s", "seed": 1, "row": "m", "gap": 0.4, "original_gap": 1.0, "floor": 0.2,
            "rte_s": 5.0, "retrain_s": 100.0, "mia_loss": 0.5, "forgotten_class_test_accuracy": 0.0,
            **dict.fromkeys(metrics, 0.9)}  # fmt: skip
    scenarios = ["random", "small", "subclass", "most", "classwise"]
    table = markdown([{**base, "scenario": s} for s in scenarios], ["s"], scenarios)
    heads = [line for line in table.splitlines() if line.startswith("### ")]
    assert heads == ["### s, random 10%", "### s, random 1%", "### s, 50% of class 0",
                     "### s, 90% of class 0", "### s, class-wise (class 0)"]  # fmt: skip


def test_the_placed_scenarios_take_the_tenth_of_each_class_nearest_to_or_farthest_from_its_mean() -> None:
    """``typical`` and ``atypical`` keep the training set's class mix (so no class-mix rule tells them from a
    random draw) and split each class by distance from its mean input."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=gen) * torch.arange(1, 201).unsqueeze(1)  # rows ever farther out
    y = torch.arange(200) % 2
    ds = SampleDataset(x, y, [f"s{i}" for i in range(200)])
    near, _ = forget_split(ds, "typical", 0)
    far, _ = forget_split(ds, "atypical", 0)
    assert torch.bincount(near.y).tolist() == torch.bincount(far.y).tolist() == [10, 10]
    for c in (0, 1):
        mean = x[y == c].mean(0)
        near_d = (near.x[near.y == c] - mean).norm(dim=1)
        far_d = (far.x[far.y == c] - mean).norm(dim=1)
        others = (x[y == c] - mean).norm(dim=1).sort().values
        assert near_d.max() <= others[9] + 1e-6 and far_d.min() >= others[-10] - 1e-6


def test_a_tuning_case_is_ranked_by_its_mean_over_run_seeds_and_shows_their_range() -> None:
    from bench.tune import _cell, summarise

    def run(case: str, closed: float, seed: int) -> dict[str, object]:
        return {"case": case, "run_seed": seed, "closed": closed, "gap": 1 - closed, "time_ratio": 0.1}

    # one lucky seed does not make a case: random:0's mean is 0.55, below random:1's 0.6
    summary = summarise([run("random:0", c, s) for s, c in enumerate((0.81, 0.47, 0.37))]
                        + [run("random:1", c, s) for s, c in enumerate((0.6, 0.6, 0.6))])  # fmt: skip
    first, second = summary["cases"]
    assert first["closed"] == pytest.approx(0.55)
    assert (first["closed_min"], first["closed_max"]) == (0.37, 0.81)
    assert summary["min_closed"] == pytest.approx(0.55) and summary["mean_closed"] == pytest.approx(0.575)
    assert _cell(first) == "55% (37-81)" and _cell(second) == "60% (60-60)"
    single = summarise([run("random:0", 0.81, 0)])
    assert _cell(single["cases"][0]) == "81%" and single["min_closed"] == 0.81


def test_with_a_floor_tuning_points_rank_by_the_closable_gap_pooled_over_cases() -> None:
    """A case whose second retrain is as far from the reference as the original (no closable gap of its
    own) still counts, by the gap it leaves, in the pooled share the points are ranked by."""
    from bench.tune import markdown, summarise

    def run(case: str, gap: float, original: float, floor: float | None) -> dict[str, object]:
        return {"case": case, "run_seed": 0, "closed": 1 - gap / original, "gap": gap,
                "original_gap": original, "floor": floor, "time_ratio": 0.1}  # fmt: skip

    # random:0 has nothing closable (floor 0.81 above the original's 0.77); random:100 has 0.46
    tight = summarise([run("random:0", 0.5, 0.77, 0.81), run("random:100", 0.3, 0.75, 0.29)])
    loose = summarise([run("random:0", 0.9, 0.77, 0.81), run("random:100", 0.2, 0.75, 0.29)])
    assert tight["pooled_closable"] == pytest.approx((0.27 + 0.45) / (-0.04 + 0.46))
    assert loose["pooled_closable"] == pytest.approx((-0.13 + 0.55) / 0.42)
    assert loose["min_closed"] < tight["min_closed"] and tight["pooled_closable"] > loose["pooled_closable"]
    table = markdown([{"params": {"a": 2}, **loose}, {"params": {"a": 1}, **tight}], [])
    assert "pooled closable" in table and table.index('{"a": 1}') < table.index('{"a": 2}')
    unfloored = summarise([run("random:0", 0.5, 0.77, None)])
    assert unfloored["pooled_closable"] is None and "pooled closable" not in markdown(
        [{"params": {}, **unfloored}], []
    )


def test_tuning_points_are_compared_with_the_first_by_the_gap_difference_of_paired_runs() -> None:
    """Two points whose runs spread widely but move together (same case, same run seed) differ by the
    paired difference, with its standard error; a run without a partner is left out."""
    from bench.tune import markdown, paired_difference, summarise

    def runs(gaps: dict[tuple[str, int], float]) -> list[dict[str, object]]:
        return [
            {"case": c, "run_seed": s, "closed": 1 - g, "gap": g, "time_ratio": 0.1}
            for (c, s), g in gaps.items()
        ]

    spread = {("random:0", 0): 0.2, ("random:0", 1): 0.9, ("random:1", 0): 0.5}
    better = runs({key: gap - 0.1 + 0.01 * i for i, (key, gap) in enumerate(spread.items())})
    diff = paired_difference(better + runs({("random:9", 0): 5.0}), runs(spread))
    assert diff is not None
    assert diff[0] == pytest.approx(-0.09) and diff[1] == pytest.approx(0.01 / 3**0.5)
    assert paired_difference(better[:1], runs(spread)) is None  # one pair: no spread to read
    first, second = summarise(runs(spread)), summarise(better)
    table = markdown([{"params": {"a": 1}, **first}, {"params": {"a": 2}, **second}], [])
    assert "(paired)" in table and "-0.09 ± 0.01" in table
    assert "(paired)" not in markdown([{"params": {"a": 1}, **first}], [])


def test_the_generated_text_set_is_seeded_and_flips_exactly_the_requested_share_of_labels() -> None:
    from bench.textgen import generate

    a, b, other = generate(400, 3, noise=0.15), generate(400, 3, noise=0.15), generate(400, 4, noise=0.15)
    assert a == b
    assert a.texts != other.texts
    assert sum(a.flipped) == 60
    assert sum(generate(400, 3, noise=0.0).flipped) == 0


def test_no_topic_word_tells_the_class_on_its_own() -> None:
    """The point of the set (unlike docs/examples/text_bert.py's): every topic word occurs under at least
    two true classes, so the model must memorise noisy samples rather than read off a separating word."""
    from bench.textgen import TOPICS, generate

    data = generate(2000, 0, noise=0.15)
    classes_of: dict[str, set[int]] = {}
    for text, label, flipped in zip(data.texts, data.labels, data.flipped, strict=True):
        if not flipped:  # a true label
            for word in text.split():
                classes_of.setdefault(word, set()).add(label)
    topic_words = {w for words in TOPICS.values() for w in words}
    assert topic_words <= set(classes_of)
    assert all(len(classes_of[w]) >= 2 for w in topic_words)


def test_the_text_setting_reads_its_sentences_as_the_service_loader_does() -> None:
    from bench.textgen import generate, text_dataset

    sets = text_dataset({"train": (60, 0), "test": (20, 1)}, max_length=16, vocab_size=384, noise=0.15)
    train = sets["train"]
    assert isinstance(train.x, dict) and set(train.x) == {"input_ids", "attention_mask"}
    assert tuple(train.x["input_ids"].shape) == (60, 16)
    assert train.y.tolist() == generate(60, 0, noise=0.15).labels
    assert train.ids[0] == "train-00000" and sets["test"].ids[-1] == "test-00019"


def test_the_text_setting_reads_the_same_token_ids_on_every_load(tmp_path) -> None:
    """A WordPiece training is not reproducible, so a tokenizer file is written once and read after: a
    model cached by one process must read the token IDs it was trained on in the next."""
    import torch

    from bench.quality import SETTINGS, TEXT_TOKENIZER
    from bench.textgen import text_dataset

    splits = {"train": (200, 0), "test": (40, 1)}
    path = tmp_path / "tokenizer.json"
    first = text_dataset(splits, max_length=16, vocab_size=384, noise=0.15, tokenizer=path)
    again = text_dataset(splits, max_length=16, vocab_size=384, noise=0.15, tokenizer=path)
    assert path.exists() and torch.equal(first["train"].x["input_ids"], again["train"].x["input_ids"])
    assert TEXT_TOKENIZER.exists()  # committed with the bench: the setting never trains one
    loads = [SETTINGS["text_bert"].load() for _ in range(2)]
    for a, b in zip(*loads, strict=True):
        assert torch.equal(a.x["input_ids"], b.x["input_ids"])
    unk = 1  # [UNK]: the committed tokenizer still covers every word the generator writes
    assert not (loads[0][0].x["input_ids"] == unk).any()


def test_a_loss_profile_row_counts_the_losses_above_ln2_and_reads_the_quantiles() -> None:
    import torch

    from bench.loss_profile import losses, profile_line
    from models.datasets import SampleDataset

    row = profile_line("D_f", torch.tensor([0.0, 0.5, 1.0, 2.0]))
    assert row.startswith("| D_f | 4 | 50.0% | ") and row.endswith(" | 1.970 |")  # q99 interpolates 1 -> 2

    class Logits(torch.nn.Module):  # the input is the logits: the losses are known in closed form
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.w

    ds = SampleDataset(torch.tensor([[0.0, 0.0], [10.0, 0.0]]), torch.tensor([0, 1]), ["a", "b"])
    out = losses(Logits(), ds)
    assert torch.allclose(out, torch.tensor([math.log(2), 10 + math.log1p(math.exp(-10))]), atol=1e-5)


def test_the_pooled_share_carries_a_bootstrap_interval_over_seeds_that_widens_with_their_spread() -> None:
    from bench.quality import pooled_interval

    agree = [record(gap=0.5, original_gap=1.0, floor=0.0) for _ in range(4)]
    assert pooled_interval(agree) == pytest.approx((0.5, 0.5))
    spread = [record(gap=g, original_gap=1.0, floor=0.0) for g in (0.1, 0.4, 0.6, 0.9)]
    lo, hi = pooled_interval(spread)
    assert pooled_closable(spread) == pytest.approx(0.5)
    assert lo < 0.5 < hi
    assert lo >= 0.1 and hi <= 0.9  # a resample's pooled share lies between the seeds' own shares
    assert pooled_interval(spread) == (lo, hi)  # a fixed draw: the table is reproducible


def test_tables_of_several_runs_pool_their_seeds_and_refuse_a_seed_counted_twice() -> None:
    from bench.quality import merged_tables

    def rec(seed: int, row: str, gap: float) -> dict[str, object]:
        metrics = dict.fromkeys(("unlearning_accuracy", "mia_score", "retain_accuracy", "test_accuracy"), 0.9)
        extra = {"rte_s": 1.0, "rte2_s": 1.0} if row == "retrain" else {"rte_s": 0.1, "retrain_s": 1.0}
        return {"setting": "s", "scenario": "random", "seed": seed, "row": row, "floor": 0.0, "mia_loss": 0.5,
                "gap": gap, "original_gap": 1.0, **metrics, **extra}  # fmt: skip

    first = [rec(1, "retrain", 0.0), rec(1, "m", 0.2), rec(1, "other", 0.9)]
    later = [rec(2, "retrain", 0.0), rec(2, "m", 0.4), rec(3, "retrain", 0.0), rec(3, "m", 0.6)]
    table = merged_tables([first, later], rows=["m"])
    assert "| m |" in table and "| other |" not in table
    assert "(pooled 60%, 90% CI" in table  # (0.8 + 0.6 + 0.4) / 3 over the three seeds of both runs
    with pytest.raises(ValueError, match="seed 1 of s, random, 'retrain' is in two runs"):
        merged_tables([first, first])


def _tiny_setting(with_reference: bool) -> object:
    """Digits cut to a few hundred rows and one epoch: the protocol, not the numbers, is under test."""
    from bench.quality import Setting
    from models.datasets import load_digits_split
    from models.training import TrainRecipe

    def load() -> tuple[object, object, object]:
        train, test = load_digits_split(seed=0)
        train = train.subset(torch.arange(300))
        return train, test, (train.subset(torch.arange(60)) if with_reference else None)

    kwargs = {"in_channels": 1, "image_size": 8, "num_classes": 10}
    return Setting("tiny", "digits, 300 rows", load, kwargs, TrainRecipe(epochs=1, lr=0.05, batch_size=32))


def test_without_spare_data_methods_read_one_half_of_the_test_set_and_every_row_is_scored_on_the_other() -> (
    None
):
    from bench.quality import Row, _fixed, run_seed, trained_original
    from models.calibration import split_test_set
    from models.datasets import load_digits_split

    run = trained_original(_tiny_setting(with_reference=False), 1, "cpu", None)
    halves = split_test_set(load_digits_split(seed=0)[1])
    assert run.halved and set(run.test.ids) == set(halves.scoring.ids)
    assert set(run.reference.ids) == set(halves.calibration.ids)
    assert not set(run.test.ids) & set(run.reference.ids)
    # the service's way is the setting's own here: no separate row for it
    service = Row("as the service", "finetune", _fixed({"epochs": 0.1}), heldout="test")
    records = run_seed(
        _tiny_setting(with_reference=False), 1, ["random"], "cpu", lambda _: None, rows=[service]
    )
    assert [r["row"] for r in records] == ["retrain"]


def test_the_row_that_calibrates_on_half_the_test_set_is_graded_on_the_other_half_only(
    tmp_path: Path,
) -> None:
    from bench.quality import Row, _cached, _fixed, forget_split, graded, run_seed, trained_original
    from models.calibration import split_test_set
    from models.metrics import avg_gap

    plain = Row("plain", "finetune", _fixed({"epochs": 0.1}))
    service = Row("as the service", "finetune", _fixed({"epochs": 0.1}), heldout="test")
    setting = _tiny_setting(with_reference=True)
    rows = [plain, service]
    records = {r["row"]: r for r in run_seed(setting, 1, ["random"], "cpu", lambda _: None, tmp_path, rows)}
    run = trained_original(setting, 1, "cpu", tmp_path)  # the models the run saved
    forget, retain = forget_split(run.train, "random", 1)
    saved = [
        _cached(tmp_path, f"{run.tag}-{k}-random", setting, "cpu", None)[0] for k in ("retrain", "retrain2")
    ]
    models = (saved[0], run.model, saved[1])
    for row, test in (("plain", run.test), ("as the service", split_test_set(run.test).scoring)):
        ref, orig, floor = graded(models, forget, retain, test)
        assert records[row]["floor"] == pytest.approx(floor)
        assert records[row]["original_gap"] == pytest.approx(avg_gap(orig, ref))
    assert records["as the service"]["original_gap"] != pytest.approx(records["plain"]["original_gap"])


def test_the_kept_front_row_times_a_run_that_passes_none_of_its_rows_through_the_front() -> None:
    """Were the bench's cache keyed apart from the run's (another layout, another trace), the row would
    silently time a cold run."""
    import copy

    from bench.quality import KEPT_SOURCE, forget_split, kept_front
    from models.architectures import build_model
    from models.datasets import load_digits_split
    from models.hooks import Hooks
    from models.training import TrainRecipe, train
    from models.unlearning import run_method

    train_ds, test_ds = load_digits_split(seed=0)
    torch.manual_seed(0)
    model = train(build_model("small_cnn", image_size=8), train_ds, TrainRecipe(epochs=1))
    forget, retain = forget_split(train_ds, "random", 0)
    cache = kept_front(model, forget, retain, "ugradsl_plus", {})
    assert cache is not None and cache.stats.computed == len(train_ds)
    hooks = Hooks(front_features=cache.bound(KEPT_SOURCE))
    run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, {}, hooks, heldout=test_ds)
    assert cache.stats.computed == len(train_ds) and cache.stats.read >= len(forget)
    assert kept_front(model, forget, retain, "ugradsl_plus", {"train_share": 0.0}) is None


def test_a_share_of_one_class_is_deleted_and_the_class_stays() -> None:
    """``subclass`` and ``most``: a seeded half or 90% of one class's samples; the rest of it stays in D_r."""
    from models.datasets import load_digits_split

    train_ds, _ = load_digits_split(seed=0)
    n_class = int((train_ds.y == 3).sum())
    for scenario, share in (("subclass", 0.5), ("most", 0.9)):
        forget, retain = forget_split(train_ds, scenario, seed=1, forgotten_class=3)
        assert forget.y.unique().tolist() == [3] and len(forget) == int(share * n_class)
        assert int((retain.y == 3).sum()) == n_class - len(forget) > 0
        again, _ = forget_split(train_ds, scenario, seed=1, forgotten_class=3)
        other, _ = forget_split(train_ds, scenario, seed=2, forgotten_class=3)
        assert again.ids == forget.ids and other.ids != forget.ids


def test_the_mislabeled_scenario_deletes_exactly_the_rows_whose_labels_the_setting_replaced() -> None:
    from bench.quality import SETTINGS, _digits

    clean, _, _ = _digits()
    noisy, _, _ = SETTINGS["digits_mislabeled"].load()
    forget, retain = forget_split(noisy, "mislabeled", seed=1)
    changed = noisy.y != clean.y  # (N,) rows given another class's label
    assert 0.05 < float(changed.float().mean()) < 0.15
    assert len(forget) == int(changed.sum()) and len(retain) == len(noisy) - len(forget)
    true_y = clean.y[clean.index_of([i.removesuffix("~mislabeled") for i in forget.ids])]
    assert bool((forget.y != true_y).all())  # every deleted row carries a wrong label
    assert len(forget.y.unique()) > 5  # spread over the classes
    with pytest.raises(ValueError, match="mislabeled rows"):
        forget_split(clean, "mislabeled", seed=1)


def test_the_flagged_row_flags_the_rows_a_setting_mislabeled_and_none_of_a_clean_set() -> None:
    """The bench's FLAGGED row flags what a request with reason "mislabeled" naming those rows would: a
    random deletion of a noisy set, its replaced rows only; of a clean set, nothing (the worker passes no
    flags either, and the run is the default's)."""
    from bench.quality import MISLABELED, SETTINGS, _digits, requested_flags

    noisy, _, _ = SETTINGS["digits_mislabeled"].load()
    forget, _ = forget_split(noisy, "random", seed=1)
    flags = requested_flags(forget)
    assert flags is not None and flags.shape == (len(forget),)
    assert flags.tolist() == [i.endswith(MISLABELED) for i in forget.ids]
    assert 0 < int(flags.sum()) < len(forget)
    clean_forget, _ = forget_split(_digits()[0], "random", seed=1)
    assert requested_flags(clean_forget) is None


def test_the_backdoor_setting_stamps_its_deleted_rows_and_scores_the_triggers_hold() -> None:
    """The backdoored rows (the mislabeled scenario's) carry the trigger and the target's label, came from
    the other classes, and nothing else changed; ``attack_success`` reads what share of the test set's
    other classes a model sends to the target once they carry the trigger."""
    from bench.quality import BACKDOOR_TARGET, SETTINGS, _digits, attack_success, stamp

    clean, test, _ = _digits()
    poisoned, _, _ = SETTINGS["digits_backdoor"].load()
    forget, retain = forget_split(poisoned, "mislabeled", seed=1)
    rows = clean.index_of([i.removesuffix("~mislabeled") for i in forget.ids])
    assert 0.05 < len(forget) / len(poisoned) < 0.15
    assert bool((forget.y == BACKDOOR_TARGET).all()) and bool((clean.y[rows] != BACKDOOR_TARGET).all())
    assert torch.equal(forget.x, stamp(clean.x[rows], 2)) and not torch.equal(forget.x, clean.x[rows])
    assert torch.equal(retain.x, clean.x[clean.index_of(retain.ids)])

    class Fixed(torch.nn.Module):  # predicts the target wherever the corner is lit, class 1 elsewhere
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lit = (x[:, 0, -2:, -2:] == x.max()).flatten(1).all(1)
            return torch.stack([lit.float(), (~lit).float()], 1)

    assert attack_success(Fixed(), test, 2) == 1.0
    assert attack_success(Fixed(), test, 1) < 1.0  # a smaller patch leaves the corner's rest unlit
    record = {"setting": "s", "scenario": "mislabeled", "row": "retrain", "seed": 1,
              "unlearning_accuracy": 1.0, "mia_score": 1.0, "mia_loss": 1.0, "retain_accuracy": 1.0,
              "test_accuracy": 0.9, "asr": 0.02, "gap": 0.0, "floor": 0.1, "rte_s": 1.0,
              "rte2_s": 1.0}  # fmt: skip
    table = markdown([record], ["s"], ["mislabeled"])
    assert "| TA | ASR | Avg Gap |" in table and "| 2.0 ± 0.0 |" in table
