"""The worker's job logic run in-process on the embedded database (the same functions a Celery worker
calls): class-wise forgetting is scored like the papers do, and a job whose every method misses its
gates fails with the measured reasons, keeps every attempt, and can be retried."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select, update

from bench.quality import score
from models.calibration import split_test_set
from models.checkpoints import load_checkpoint
from models.datasets import load_dataset
from models.unlearning.silence import SILENT
from service.core import deletions
from service.core.db.engine import session_scope
from service.core.db.tables import (
    Dataset,
    DatasetSample,
    DeletionRequest,
    ForgottenSample,
    Job,
    Model,
    ModelVersion,
)
from service.core.keys import create_key
from service.core.settings import Settings
from tests.helpers import migrated
from workers.demo import ensure_demo
from workers.orchestrate import process_model
from workers.runner import most_taken

pytestmark = pytest.mark.slow


@pytest.fixture
def demo(tmp_path: Path) -> Settings:
    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"))  # type: ignore[call-arg]
    settings.var_dir.mkdir(parents=True)
    migrated(settings.resolved_database_url)
    ensure_demo(settings)
    return settings


def submit(settings: Settings, ids: list[str]) -> tuple[str, str]:
    with session_scope(settings.resolved_database_url) as s:
        model = s.scalars(select(Model)).one()
        key, _ = create_key(s, tenant=model.tenant, scopes=["deletion:write"])
        req = deletions.submit(s, model=model, key=key, sample_ids=ids, reference=None, max_ids=10**6)
        return model.id, req.id


def ungated_class(settings: Settings, label: int) -> list[str]:
    """The demo's training sample IDs of one class, sorted, with the model's gates lifted (a job that takes
    them publishes whatever the method gives)."""
    with session_scope(settings.resolved_database_url) as s:
        train_id = s.scalars(select(Model.train_dataset_id)).one()
        ids = s.scalars(
            select(DatasetSample.sample_id).where(
                DatasetSample.dataset_id == train_id, DatasetSample.label == label
            )
        )
        s.execute(update(Model).values(gates={}))
        return sorted(ids)


def test_a_deletion_above_the_models_retrain_share_is_retrained_and_a_smaller_one_unlearned(
    demo: Settings,
) -> None:
    """A large deletion costs an unlearning run up to a retrain and closes less of its gap: a model's
    retrain_above_share sends one that takes at least that share of what is left to an exact retrain."""
    with session_scope(demo.resolved_database_url) as s:
        s.execute(update(Model).values(retrain_above_share=0.05, gates={}))
    large = [f"digits-{i:04d}" for i in range(0, 1437, 10)]  # 144 of 1,437: 10%
    model_id, large_id = submit(demo, large)
    assert process_model(demo, model_id) == "idle"
    model_id, small_id = submit(demo, ["digits-0001", "digits-0002", "digits-0003"])  # 0.2% of what is left
    assert process_model(demo, model_id) == "idle"
    with session_scope(demo.resolved_database_url) as s:
        first, second = (s.get_one(Job, s.get_one(DeletionRequest, r).job_id) for r in (large_id, small_id))
        assert (first.state, second.state) == ("completed", "completed"), (first.error, second.error)
        assert [a["method"] for a in first.metrics["attempts"]] == ["retrain"]
        assert first.metrics["data"]["retrained_above_share"] == 0.05
        assert [a["method"] for a in second.metrics["attempts"]] == ["ugradsl_plus"]
        assert "retrained_above_share" not in second.metrics["data"]
        s.execute(update(Model).values(gates={"min_mia_score": 1.0}, fallback_methods=["finetune"]))
    # A retrain its gates refuse fails the job saying the share rule, not the chain, chose the method.
    model_id, refused_id = submit(demo, [f"digits-{i:04d}" for i in range(5, 1437, 10)])
    assert process_model(demo, model_id) == "idle"
    with session_scope(demo.resolved_database_url) as s:
        third = s.get_one(Job, s.get_one(DeletionRequest, refused_id).job_id)
        assert third.state == "failed" and [a["method"] for a in third.metrics["attempts"]] == ["retrain"]
        said = third.error or ""
        assert said.startswith("the exact retrain failed its gates (retrain: "), said
        assert said.endswith("retrain_above_share (0.05) of its training samples, so it alone was tried")


def test_most_of_a_class_is_retrained_above_the_models_class_share_and_a_whole_class_is_not(
    demo: Settings,
) -> None:
    """Unlearning leaves most of 90% of a class recognised on deep networks where a retrain forgets it: a
    job that takes most of a class says so, and a model's retrain_above_class_share sends it to an exact
    retrain. A class taken whole is forgotten as a retrain forgets it, and is unlearned whatever the
    share."""
    three, five, seven = (ungated_class(demo, c) for c in (3, 5, 7))
    model_id, warned = submit(demo, three[: len(three) * 6 // 10])  # 60% of class 3, no policy set
    assert process_model(demo, model_id) == "idle"
    with session_scope(demo.resolved_database_url) as s:
        s.execute(update(Model).values(retrain_above_class_share=0.5))
    model_id, most = submit(demo, five[: len(five) * 6 // 10])  # 60% of class 5: retrained
    assert process_model(demo, model_id) == "idle"
    model_id, whole = submit(demo, [*seven, *three[-2:]])  # class 7 whole and 2 more rows of class 3
    assert process_model(demo, model_id) == "idle"
    with session_scope(demo.resolved_database_url) as s:
        jobs = [s.get_one(Job, s.get_one(DeletionRequest, r).job_id) for r in (warned, most, whole)]
        assert [j.state for j in jobs] == ["completed"] * 3, [j.error for j in jobs]
        methods = [[a["method"] for a in j.metrics["attempts"]] for j in jobs]
        assert methods == [["ugradsl_plus"], ["retrain"], ["ugradsl_plus"]]
        said, share = jobs[0].metrics["attempts"][0].get("warnings", []), (len(three) * 6 // 10) / len(three)
        assert any(f"took {share:.1%} of class 3" in w and "class_share" in w for w in said), said
        assert jobs[1].metrics["data"]["retrained_above_class_share"] == {
            "share": 0.5,
            "class": 5,
            "taken": round((len(five) * 6 // 10) / len(five), 6),
        }
        assert "retrained_above_class_share" not in jobs[2].metrics["data"]
        assert not any("took" in w for w in jobs[2].metrics["attempts"][0].get("warnings", []))
    # a policy set above the deletion's share is named as such (a review: it read as if unset)
    [said] = most_taken((3, 0.6), 0.7)
    assert "took 60.0% of class 3" in said and "(set to 0.7, above this deletion's share)" in said


def test_forgetting_a_whole_class_scores_test_accuracy_without_it(demo: Settings) -> None:
    ids = ungated_class(demo, 3)
    model_id, req_id = submit(demo, ids)
    assert process_model(demo, model_id) == "idle"
    with session_scope(demo.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        job = s.get_one(Job, req.job_id)
        assert (req.state, req.model_version) == ("completed", 2)
        base, result = job.metrics["base"], job.metrics["result"]
    # The class is gone from the scored test set, and reported on its own.
    n_class = result["forgotten_class_test_count"]
    scored = job.metrics["data"]["scoring"]["samples"]
    assert job.metrics["data"]["calibration"]["samples"] + scored == 360  # the test set, halved
    assert 120 < scored < 240
    assert n_class > 0 and result["test_count"] == base["test_count"] == scored - n_class
    assert base["forgotten_class_test_accuracy"] > 0.9  # v1 still knows the class
    assert result["forgotten_class_test_accuracy"] < base["forgotten_class_test_accuracy"]
    assert result["unlearning_accuracy"] > 0.5
    assert set(job.metrics["timings"]) >= {"load", "evaluate_base", "unlearn:ugradsl_plus", "publish"}
    # A class leaving is run for its epochs, not sized by held-out losses, and the record says so.
    runs = job.metrics["attempts"][0]["runs"]
    assert runs[0]["sized_by"] == "epochs" and runs[0]["forget_rows"] == len(ids) and runs[0]["steps"] > 0
    # The bench scores the published version exactly as the service did: the same numbers, class-wise MIA
    # included (its non-members are the whole test set in both).
    with session_scope(demo.resolved_database_url) as s:
        m = s.get_one(Model, model_id)
        v2 = s.scalars(
            select(ModelVersion).where(ModelVersion.model_id == m.id, ModelVersion.number == 2)
        ).one()
        sources = [
            (d.kind, d.uri) for d in (s.get_one(Dataset, i) for i in (m.train_dataset_id, m.test_dataset_id))
        ]
        v2_uri, v2_sha256, published = v2.checkpoint_uri, v2.sha256, v2.metrics
    train_ds, test_ds = (load_dataset(*src) for src in sources)
    forget, retain = train_ds.split_by_ids(ids)
    model, _ = load_checkpoint(v2_uri, sha256=v2_sha256)
    bench = score(model, forget, retain, split_test_set(test_ds).scoring)  # the half no method read
    for key in ("mia_score", "unlearning_accuracy", "retain_accuracy", "test_accuracy"):
        assert bench[key] == pytest.approx(published[key], abs=1e-6), key
    assert bench["mia_loss"] == pytest.approx(published["mia_loss_score"], abs=1e-6)
    assert bench["forgotten_class_test_accuracy"] == pytest.approx(published["forgotten_class_test_accuracy"])


def test_a_deletion_of_half_a_class_that_stays_is_read_beside_that_class_and_the_job_says_so(
    demo: Settings,
) -> None:
    """The class stays in D_r, so the run is sized as a random deletion's, and its retain reads lean on the
    class (``retain_match``): the job's record tells an auditor how (each retained zero read k times)."""
    zeros = ungated_class(demo, 0)
    model_id, req_id = submit(demo, zeros[::2])
    assert process_model(demo, model_id) == "idle"
    with session_scope(demo.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        runs = s.get_one(Job, req.job_id).metrics["attempts"][0]["runs"]
    assert (req.state, req.model_version) == ("completed", 2)
    assert runs[0]["sized_by"] == "pushes" and runs[0]["forget_rows"] == len(zeros[::2])
    assert set(runs[0]["retain_read_times"]) == {"0"} and runs[0]["retain_read_times"]["0"] > 1


def test_a_class_an_earlier_job_took_whole_is_switched_off_in_every_later_version(demo: Settings) -> None:
    """A later job's ascent on other rows can raise a gone class's logit again (a client saw one of six test
    rows come back). The job that takes the class is judged on what its method did; every later version
    has the class's output switched off (models/unlearning/silence.py), and says so."""
    threes = ungated_class(demo, 3)
    model_id, _ = submit(demo, threes)
    assert process_model(demo, model_id) == "idle"
    submit(demo, [f"digits-{i:04d}" for i in range(0, 1400, 9) if f"digits-{i:04d}" not in threes])
    assert process_model(demo, model_id) == "idle"
    with session_scope(demo.resolved_database_url) as s:
        first, second = (s.scalars(select(Job).where(Job.base_version == n)).one() for n in (1, 2))
        v3 = s.scalars(select(ModelVersion).where(ModelVersion.number == 3)).one()
        test_id = s.get_one(Model, model_id).test_dataset_id
        test_source = s.get_one(Dataset, test_id)
        assert second.state == "completed", second.error
        assert "silenced_classes" not in first.metrics["attempts"][0]
        assert second.metrics["attempts"][-1]["silenced_classes"] == [3]
        uri, sha256 = v3.checkpoint_uri, v3.sha256
    model, _ = load_checkpoint(uri, sha256=sha256)
    head = model.classifier
    assert float(head.bias.detach()[3]) == SILENT and not bool(head.weight.detach()[3].any())
    test = load_dataset(test_source.kind, test_source.uri)
    with torch.no_grad():
        assert not bool((model.eval()(test.x).argmax(1) == 3).any())


def test_the_class_gate_judges_the_class_a_job_takes_not_those_earlier_jobs_took(demo: Settings) -> None:
    """A class taken earlier is switched off (0 on its test rows), and pooled with the class a job takes it
    diluted that class's number: a probe's version still predicting its class on 95% of the rows read 17%
    and passed `max_forgotten_class_accuracy`. A run that moves nothing must fail that gate."""
    threes = ungated_class(demo, 3)
    model_id, _ = submit(demo, threes)
    assert process_model(demo, model_id) == "idle"
    sevens = ungated_class(demo, 7)
    with session_scope(demo.resolved_database_url) as s:
        s.execute(
            update(Model).values(
                gates={"max_forgotten_class_accuracy": 0.5},
                default_method="finetune",
                default_params={"lr": 1e-8, "epochs": 0.1},
            )
        )
    submit(demo, sevens)
    assert process_model(demo, model_id) == "idle"
    with session_scope(demo.resolved_database_url) as s:
        second = s.scalars(select(Job).where(Job.base_version == 2)).one()
        attempt = second.metrics["attempts"][-1]
    assert second.state == "failed", attempt
    assert attempt["metrics"]["forgotten_class_test_accuracy"] > 0.9  # class 7 alone, still predicted
    assert any("forgotten classes still predicted" in f for f in attempt["gate_failures"])
    rows = attempt["metrics"]["forgotten_class_test_count"]
    assert second.metrics["base"]["forgotten_class_test_count"] == rows  # class 7's rows, not 3's too
    assert "forgotten class 7 is still predicted" in " ".join(attempt.get("warnings", []))


def test_a_class_emptied_over_two_jobs_is_forgotten_with_the_rows_the_first_took(demo: Settings) -> None:
    """The last row of a class whose other rows an earlier job forgot: the class run read that one row,
    stopped once it was misclassified, and left the class predicted for half its test rows (a probe's
    job, and its retry, failed the class gate). It now reads the class's earlier-forgotten rows too."""
    sevens = ungated_class(demo, 7)
    with session_scope(demo.resolved_database_url) as s:
        s.execute(update(Model).values(gates={"max_forgotten_class_accuracy": 0.05}))
    model_id, _ = submit(demo, sevens[:-1])
    assert process_model(demo, model_id) == "idle"
    submit(demo, sevens[-1:])
    assert process_model(demo, model_id) == "idle"
    with session_scope(demo.resolved_database_url) as s:
        second = s.scalars(select(Job).where(Job.base_version == 2)).one()
        attempt = second.metrics["attempts"][-1]
    assert second.state == "completed", (second.error, attempt)
    assert attempt["metrics"]["forgotten_class_test_accuracy"] <= 0.05
    assert second.metrics["data"]["class_rows_forgotten_earlier"] == len(sevens) - 1
    assert attempt["runs"][0]["forget_rows"] == len(sevens)


def test_the_demos_v1_is_scored_on_the_data_every_job_scores_on(demo: Settings) -> None:
    """The version line compares like with like: v1's TA is the job's base TA (same model, same data)."""
    model_id, _ = submit(demo, [f"digits-{i:04d}" for i in range(0, 200, 10)])
    process_model(demo, model_id)
    with session_scope(demo.resolved_database_url) as s:
        v1 = s.scalars(select(ModelVersion.metrics).where(ModelVersion.number == 1)).one()
        job = s.scalars(select(Job)).one()
    assert v1["test_count"] == job.metrics["data"]["scoring"]["samples"] == job.metrics["base"]["test_count"]
    assert v1["test_accuracy"] == job.metrics["base"]["test_accuracy"]
    # What ran, beside what was asked: the params say pushes 16; the run was sized from the model.
    (run,) = job.metrics["attempts"][0]["runs"]
    assert run["sized_by"] == "pushes" and run["forget_rows"] == 20
    assert run["pushes_per_sample"] == pytest.approx(max(1, 16 * (1 - math.exp(-run["distance"] / 0.6))))
    assert 0 < run["trained_weights"] <= run["model_weights"] and run["steps"] > 0


def test_the_demo_is_the_same_model_wherever_it_is_trained(tmp_path: Path) -> None:
    """Its initial weights were unseeded: every fresh state directory got another model (test accuracy
    0.95-0.99 measured), and the weaker ones failed the demo's own gates on a random 30-sample deletion."""
    from models.datasets import load_digits_split
    from workers.demo import trained_demo

    train_ds, _ = load_digits_split(seed=0, test_fraction=0.2)
    here, there = (
        trained_demo(Settings(UNLEARN_VAR_DIR=str(tmp_path), UNLEARN_DEMO_CACHE=str(tmp_path / d)), train_ds)  # type: ignore[call-arg]
        for d in ("a", "b")
    )
    for (name, a), b in zip(here.state_dict().items(), there.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_when_every_method_misses_its_gates_the_job_fails_with_reasons(demo: Settings) -> None:
    with session_scope(demo.resolved_database_url) as s:
        s.execute(update(Model).values(gates={"min_mia_score": 1.01}, fallback_methods=["gradient_ascent"]))
    model_id, req_id = submit(demo, [f"digits-{i:04d}" for i in range(0, 100, 7)])
    process_model(demo, model_id)
    with session_scope(demo.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        job = s.get_one(Job, req.job_id)
        assert req.state == "failed" and job.state == "failed"
        assert [a["method"] for a in job.metrics["attempts"]] == ["ugradsl_plus", "gradient_ascent"]
        assert all(not a["passed"] and a["gate_failures"] for a in job.metrics["attempts"])
        assert "MIA score" in (job.error or "")
        assert job.metrics["gates"] == {"min_mia_score": 1.01}  # what they were judged by
        assert s.get_one(Model, model_id).latest_version == 1  # nothing published
        # Where its time went is on the record too, each method's phases included, and the phase it ended
        # in says where it stopped.
        timings = job.metrics["timings"]
        assert {"load", "evaluate_base", "unlearn:ugradsl_plus", "evaluate:gradient_ascent"} <= set(timings)
        assert all(t >= 0 for t in timings.values())
        assert job.phase == "evaluate:gradient_ascent"


def test_a_run_that_forgot_nothing_is_refused_and_the_exact_retrain_published(demo: Settings) -> None:
    """A probe's lr-1e-8 run moved no weight and was published as a deletion. Here a class-wise deletion at
    that lr leaves the class predicted on its test rows: the registered models' default class gate refuses
    it, and the retrain fallback publishes."""
    ids = ungated_class(demo, 3)
    with session_scope(demo.resolved_database_url) as s:
        s.execute(
            update(Model).values(
                gates={"max_forget_accuracy_excess_se": 3.0, "max_forgotten_class_accuracy": 0.5},
                default_params={"lr": 1e-8},
                fallback_methods=["retrain"],
            )
        )
    model_id, req_id = submit(demo, ids)
    process_model(demo, model_id)
    with session_scope(demo.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        job = s.get_one(Job, req.job_id)
        assert req.state == "completed", job.error
        first, second = job.metrics["attempts"]
        assert first["method"] == "ugradsl_plus" and not first["passed"]
        [why] = first["gate_failures"]
        assert why.startswith("forgotten classes still predicted for ") and why.endswith(" > 0.5")
        assert first["metrics"]["forget_accuracy_excess_se"] is None  # its rows are the class gate's
        assert second["method"] == "retrain" and second["passed"]
        assert second["metrics"]["unlearning_accuracy"] == 1.0


def test_a_random_deletion_that_forgot_nothing_is_refused_by_the_excess_gate(demo: Settings) -> None:
    """The same at lr 1e-8 on a random deletion from a model that memorised it: D_f still recognised above
    unseen data, and the run took nothing off it."""
    with session_scope(demo.resolved_database_url) as s:
        s.execute(
            update(Model).values(gates={"max_forget_accuracy_excess_se": 1.0}, default_params={"lr": 1e-8})
        )
    model_id, req_id = submit(demo, [f"digits-{i:04d}" for i in range(0, 1400, 4)])
    process_model(demo, model_id)
    with session_scope(demo.resolved_database_url) as s:
        job = s.get_one(Job, s.get_one(DeletionRequest, req_id).job_id)
        assert job.state == "failed"
        [attempt] = job.metrics["attempts"]
        base, result = job.metrics["base"], attempt["metrics"]
        assert result["forget_accuracy_judged"] == base["forget_accuracy_judged"] == 1.0
        assert result["forget_accuracy_excess_se"] > 1.0
        [why] = attempt["gate_failures"]
        assert why.startswith("the forget set is still recognised: its accuracy 1.0000 is ")


def test_a_job_runs_in_bf16_autocast_and_publishes(tmp_path: Path) -> None:
    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_PRECISION="bf16")  # type: ignore[call-arg]
    settings.var_dir.mkdir(parents=True)
    migrated(settings.resolved_database_url)
    ensure_demo(settings)
    # finetune: UGradSL+'s ascent term is too sensitive for bf16 on CPU (measured: it collapsed the
    # model and the test-accuracy gate refused the version), so this checks the bf16 path itself.
    with session_scope(settings.resolved_database_url) as s:
        s.execute(update(Model).values(default_method="finetune", default_params={}))
    model_id, req_id = submit(settings, [f"digits-{i:04d}" for i in range(0, 400, 10)])
    process_model(settings, model_id)
    with session_scope(settings.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        assert (req.state, req.model_version) == ("completed", 2), req.error
        result = s.get_one(Job, req.job_id).metrics["result"]
    assert result["test_accuracy"] > 0.9  # bf16 steps did not wreck the model


def claimed_toy_job(tmp_path: Path, owner: str) -> tuple[str, str]:
    """A fresh embedded database whose model `toy` has one request in a job claimed under ``owner``'s
    lease: (database URL, job id)."""
    from tests.factories import make_model
    from workers import claims, leases

    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"))  # type: ignore[call-arg]
    settings.var_dir.mkdir(parents=True)
    url = settings.resolved_database_url
    migrated(url)
    with session_scope(url) as s:
        model = make_model(s, name="toy")
        key, _ = create_key(s, tenant="default", scopes=["deletion:write"])
        deletions.submit(s, model=model, key=key, sample_ids=["toy-0001"], reference=None, max_ids=10)
        assert leases.acquire(s, model.id, owner, 60)
        job = claims.claim_pending(s, model)
        assert job is not None
        return url, job.id


def test_a_worker_that_lost_its_lease_cannot_overwrite_the_job(tmp_path: Path) -> None:
    """Worker A's lease lapsed and B took the model over: A's failure path must not touch the job."""
    from service.core.states import JobState
    from workers.jobstore import JobStore, LeaseLost

    url, job_id = claimed_toy_job(tmp_path, owner="B")
    with pytest.raises(LeaseLost):
        JobStore(url, job_id, "A").close(JobState.FAILED, error="stale worker A")
    with session_scope(url) as s:
        job = s.get_one(Job, job_id)
        assert job.state == "running" and job.error is None
        assert s.scalars(select(DeletionRequest.state)).all() == ["processing"]
    JobStore(url, job_id, "B").close(JobState.FAILED, error="owner B")  # the owner still can
    with session_scope(url) as s:
        assert s.get_one(Job, job_id).state == "failed"


def test_outages_of_either_kind_count_together_and_a_planned_stop_apart(tmp_path: Path) -> None:
    """A database outage and a full volume taking turns never reached the limit of either (a review):
    each hand-back re-runs the job at no attempt's cost, so they count together; a deploy between them is
    no outage and starts the count again."""
    from workers import claims
    from workers.jobstore import JobStore

    url, job_id = claimed_toy_job(tmp_path, owner="A")
    store = JobStore(url, job_id, "A")
    causes = [claims.DATABASE_GONE, claims.STORAGE_SHORT_CAUSE, claims.STOPPED, claims.STORAGE_SHORT_CAUSE]
    counts = [store.give_back(cause, limit=3) for cause in causes]
    assert counts == [1, 2, 1, 1]
    assert store.give_back(claims.DATABASE_GONE, limit=3) == 2
    assert store.give_back(claims.STORAGE_SHORT_CAUSE, limit=3) == 3  # the caller fails the job here


def test_a_job_fails_saying_so_when_its_base_checkpoint_changed_on_disk(demo: Settings) -> None:
    with session_scope(demo.resolved_database_url) as s:
        path = Path(s.scalars(select(ModelVersion.checkpoint_uri)).one())
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit: the file is no longer the one v1 recorded
    path.write_bytes(bytes(raw))
    model_id, req_id = submit(demo, ["digits-0001"])
    process_model(demo, model_id)
    with session_scope(demo.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        job = s.get_one(Job, req.job_id)
        assert (req.state, job.state) == ("failed", "failed")
        assert "ChecksumMismatch" in (job.error or "") and "refusing to load" in (job.error or "")
        assert s.get_one(Model, model_id).latest_version == 1


def test_a_job_past_its_models_time_limit_fails_saying_so_and_publishes_nothing(demo: Settings) -> None:
    with session_scope(demo.resolved_database_url) as s:  # a run of minutes under a limit of one second
        s.execute(
            update(Model).values(default_params={"epochs": 200, "retain_budget": 0}, time_limit_seconds=3)
        )
    model_id, req_id = submit(demo, [f"digits-{i:04d}" for i in range(0, 300, 3)])
    process_model(demo, model_id)
    with session_scope(demo.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        job = s.get_one(Job, req.job_id)
        assert (req.state, job.state) == ("failed", "failed")
        assert "JobTimedOut" in (job.error or "") and "time limit is 3 s" in (job.error or "")
        assert s.get_one(Model, model_id).latest_version == 1
        # what it measured before the limit stays on the job: the base version's scores, and the attempt
        # that did not end, with why
        assert job.metrics["base"]["test_accuracy"] > 0.9
        (attempt,) = job.metrics["attempts"]
        assert attempt["method"] == "ugradsl_plus" and not attempt["passed"]
        assert attempt["error"].startswith("JobTimedOut: ")


def test_a_method_that_diverges_fails_its_attempt_and_the_fallback_runs(demo: Settings) -> None:
    """Ascent at a huge step with nothing to hold it makes the weights NaN: the attempt fails as diverged
    (it had failed the job with an error from the attack's scikit-learn classifier, fallbacks untried)."""
    diverging = {"lr": 10.0, "epochs": 50, "grad_clip": 0}
    with session_scope(demo.resolved_database_url) as s:
        s.execute(
            update(Model).values(
                default_method="gradient_ascent", default_params=diverging, fallback_methods=["finetune"]
            )
        )
    model_id, req_id = submit(demo, [f"digits-{i:04d}" for i in range(0, 300, 5)])
    process_model(demo, model_id)
    with session_scope(demo.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        job = s.get_one(Job, req.job_id)
        assert (req.state, req.model_version) == ("completed", 2), req.error
        first, second = job.metrics["attempts"]
        assert first["method"] == "gradient_ascent" and not first["passed"]
        (why,) = first["gate_failures"]
        assert why.startswith("diverged: ") and "NaN or infinite" in why
        assert second["method"] == "finetune" and second["passed"]
        assert job.metrics["result"]["test_accuracy"] > 0.9


def test_the_services_time_limit_bounds_a_model_without_one(demo: Settings) -> None:
    with session_scope(demo.resolved_database_url) as s:
        s.execute(update(Model).values(default_params={"epochs": 200, "retain_budget": 0}))
    model_id, req_id = submit(demo, ["digits-0002", "digits-0003"])
    process_model(demo.model_copy(update={"job_time_limit_seconds": 1.0}), model_id)
    with session_scope(demo.resolved_database_url) as s:
        job = s.get_one(Job, s.get_one(DeletionRequest, req_id).job_id)
        assert job.state == "failed" and "time limit is 1 s" in (job.error or "")


def test_a_job_fails_saying_so_when_its_dataset_file_changed_since_registration(demo: Settings) -> None:
    with session_scope(demo.resolved_database_url) as s:
        train = s.get_one(Dataset, s.scalars(select(Model.train_dataset_id)).one())
        path, registered = Path(train.uri), train.sha256
    assert registered is not None  # the demo's datasets are pinned at registration
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["x"][0] += 1.0  # a still perfectly readable file, with one sample's pixels changed
    np.savez(path, **arrays)
    model_id, req_id = submit(demo, ["digits-0001"])
    process_model(demo, model_id)
    with session_scope(demo.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        job = s.get_one(Job, req.job_id)
        assert (req.state, job.state) == ("failed", "failed")
        # the demo's datasets lie in the service's own folder: named, not spelt out, to the client
        said = job.error or ""
        assert "dataset file <uploaded datasets>/digits-train.npz changed since registration" in said
        assert str(path.parent) not in (job.error or "")
        assert f"registered {registered[:16]}" in (job.error or "") and "refusing to use" in (
            job.error or ""
        )
        assert s.get_one(Model, model_id).latest_version == 1


def test_a_request_naming_a_subject_forgets_every_sample_of_that_subject(demo: Settings) -> None:
    """Identity-level forgetting: the demo's training set re-registered from an .npz that carries a
    `subject_ids` array (which the worker's loader ignores), then one person is erased by name."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.core.dataset_ids import file_sha256, read_samples
    from service.core.registry import register_dataset
    from tests.factories import make_key

    url = demo.resolved_database_url
    with session_scope(url) as s:
        model = s.scalars(select(Model)).one()
        source = Path(s.get_one(Dataset, model.train_dataset_id).uri)
    with np.load(source, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    n = len(arrays["ids"])
    people = demo.dataset_dir / "digits-train-people.npz"
    np.savez(people, **arrays, subject_ids=np.array([f"person-{i % 120}" for i in range(n)]))
    ids, labels, subjects = read_samples("npz", people)
    with session_scope(url) as s:
        ds = register_dataset(
            s,
            tenant="default",
            name="digits-train-people",
            kind="npz",
            uri=str(people),
            sample_ids=ids,
            labels=labels,
            actor="test",
            sha256=file_sha256(people),
            subject_ids=subjects,
        )
        s.execute(update(Model).values(train_dataset_id=ds.id, gates={}))
        key = make_key(s, scopes=("deletion:write",))
    theirs = [sid for sid, subj in zip(ids, subjects or [], strict=True) if subj == "person-7"]
    assert len(theirs) == len(range(7, n, 120)) > 5

    with TestClient(create_app(demo)) as client:
        auth = {"Authorization": f"Bearer {key}"}
        r = client.post(
            "/v1/models/digits/deletion-requests", json={"subject_ids": ["person-7"]}, headers=auth
        )
        assert r.status_code == 202, r.text
        assert process_model(demo, model.id) == "idle"
        with session_scope(url) as s:
            req = s.get_one(DeletionRequest, r.json()["id"])
            assert (req.state, req.model_version, req.sample_ids) == ("completed", 2, theirs)
            forgotten = s.scalars(
                select(ForgottenSample.sample_id).where(ForgottenSample.model_id == model.id)
            ).all()
            assert sorted(forgotten) == sorted(theirs)
        listed = client.get(
            "/v1/models/digits/samples", params={"subject_id": "person-7"}, headers=auth
        ).json()["items"]
        assert [i["sample_id"] for i in listed] == theirs
        assert {i["forgotten_in"] for i in listed} == {"v2"}
        others = client.get(
            "/v1/models/digits/samples", params={"subject_id": "person-8"}, headers=auth
        ).json()["items"]
        assert others and {i["forgotten_in"] for i in others} == {None}


def test_a_job_stopped_by_a_worker_shutdown_is_resumed_without_spending_an_attempt(demo: Settings) -> None:
    """A deploy or Ctrl-C during a long job is not a crash: the job stops at its next safe point, stays
    running for the next worker, and gets its attempt back (three restarts used to fail it as "the worker
    died each time"). Celery's own shutdown flag is what a SIGTERM sets."""
    from celery.worker import state as worker_state

    model_id, req_id = submit(demo, [f"digits-{i:04d}" for i in range(0, 100, 10)])
    worker_state.should_stop = 0  # EX_OK: a warm shutdown was asked for
    try:
        for _ in range(3):
            assert process_model(demo, model_id) == "lost"
    finally:
        worker_state.should_stop = None
    with session_scope(demo.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        job = s.get_one(Job, req.job_id)
        assert (req.state, job.state, job.phase, job.attempts) == ("processing", "running", "queued", 0)
        assert s.get_one(Model, model_id).lease_owner is None
    assert process_model(demo, model_id) == "idle"
    with session_scope(demo.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        assert (req.state, req.model_version, s.get_one(Job, req.job_id).attempts) == ("completed", 2, 1)


def test_a_job_shows_every_param_in_effect_from_the_start_of_its_method(demo: Settings) -> None:
    """A job stopped mid-method (here by its time limit) shows the params it ran with, defaults included,
    not only the model's overrides the claim copied."""
    with session_scope(demo.resolved_database_url) as s:
        s.execute(
            update(Model).values(
                # 16-row batches: ~16k steps, about 20 s here (stopped at ~40%), ~40 s on the slower machine
                # of earlier stops; 64-row batches finished inside the limit on this one, leaving the
                # test nothing to stop
                default_params={"epochs": 200, "retain_budget": 0, "batch_size": 16},
                time_limit_seconds=8,
                gates={},
            )
        )
    model_id, req_id = submit(demo, [f"digits-{i:04d}" for i in range(0, 100, 7)])
    process_model(demo, model_id)
    with session_scope(demo.resolved_database_url) as s:
        job = s.get_one(Job, s.get_one(DeletionRequest, req_id).job_id)
        assert job.state == "failed" and "JobTimedOut" in (job.error or "")
        assert job.phase == "unlearn:ugradsl_plus"
        [attempt] = job.metrics["attempts"]  # the one it stopped in, with why
        assert attempt["error"].startswith("JobTimedOut: ") and not attempt["passed"]
        assert 0.1 < job.progress < 0.95  # where it stopped: within the method's span, not 0
        assert job.params["epochs"] == 200
        assert {"lr", "p", "batch_size", "bound_by"} <= set(job.params)


def test_a_job_runs_on_the_cpu_threads_the_worker_is_set_to_and_records_them(demo: Settings) -> None:
    """``UNLEARN_TORCH_THREADS``: several workers on one CPU host must not each take every core."""
    before = torch.get_num_threads()
    settings = demo.model_copy(update={"torch_threads": 1})
    try:
        model_id, _ = submit(settings, ["digits-0001", "digits-0002"])
        assert process_model(settings, model_id) == "idle"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with session_scope(settings.resolved_database_url) as s:
        job = s.scalars(select(Job)).one()
        assert job.state == "completed" and job.metrics["data"]["cpu_threads"] == 1
