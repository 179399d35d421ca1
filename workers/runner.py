"""The pipeline of one job: load the base version, split the data, score the base, run the model's method
chain until one passes its gates, publish. Every database write goes through `JobStore`; the long
computation holds no transaction open."""

from __future__ import annotations

import copy
import dataclasses
import errno
import functools
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError, StatementError

from models.architectures import build_model, layer_normed
from models.calibration import held_out, roles
from models.checkpoints import CheckpointWriteFailed, load_weights, save_checkpoint
from models.datasets import SampleDataset
from models.hooks import Cancelled, Hooks
from models.metrics import NonFiniteOutputs, SetScores, evaluate, forgotten_classes, score_set
from models.unlearning import run_method
from models.unlearning.feature_cache import CacheStats, FeatureCache
from models.unlearning.params import params_to_dict, parse_params, with_recipe
from models.unlearning.silence import silence_classes
from service.core import jobs
from service.core.db.engine import session_scope
from service.core.errors import one_line
from service.core.model_specs import effective_time_limit
from service.core.settings import Settings
from service.core.states import JobPhase, JobState, method_phase
from workers import failpoints, front_cache, gates, kept_rows, kept_scores
from workers.claims import DATABASE_GONE, STOPPED, STORAGE_SHORT_CAUSE
from workers.datasets import DatasetRef, load_registered, recheck_registered
from workers.device import cpu_threads, precision, resolve_device, synchronize
from workers.jobstore import JobCancelled, JobContext, JobStore, JobTimedOut, LeaseLost, WorkerStopping
from workers.progress import Reporter
from workers.shutdown import shutting_down
from workers.storage import version_path

log = logging.getLogger(__name__)
T = TypeVar("T")

NOTHING_LEFT = (
    "this job would forget every remaining training sample of the model: unlearning keeps a model on the "
    "samples it has not forgotten, and none would be left; stop serving the model instead (or register "
    "a new one), or retry with fewer samples"
)


def run_job(settings: Settings, job_id: str, owner: str) -> None:
    """Run a claimed job to its end: completed, failed (with the reason) or cancelled. Raises LeaseLost
    when another worker owns the model now (it will resume the job)."""
    store = JobStore(settings.resolved_database_url, job_id, owner)
    try:
        ctx = store.load_context()
    except (OperationalError, InterfaceError) as exc:  # the database went away as the job started
        lost_database(settings, store, None, exc)
        return
    except Exception as exc:  # noqa: BLE001 - a job that cannot even start is failed, not retried forever
        failed(settings, store, None, exc)
        return
    rep = Reporter(
        settings.resolved_database_url,
        job_id,
        ctx.model_id,
        owner,
        lease_s=settings.lease_seconds,
        interval=settings.heartbeat_seconds,
        time_limit_s=effective_time_limit(ctx.time_limit_seconds, settings.job_time_limit_seconds),
    )
    try:
        with rep:
            _run(settings, ctx, store, rep)
    except LeaseLost:
        raise
    except WorkerStopping:
        hand_back(store)
        raise LeaseLost("the worker is shutting down; the job is left to the next one") from None
    except (Cancelled, JobCancelled):
        end(store, rep, JobState.CANCELLED, jobs.CANCELLED_BY_ADMIN)
    except JobTimedOut as exc:
        end(store, rep, JobState.FAILED, f"JobTimedOut: {exc}")
    except (OperationalError, InterfaceError) as exc:
        lost_database(settings, store, rep, exc)
    except CheckpointWriteFailed as exc:  # only the checkpoint's write: a read's EIO is a broken file
        if exc.errno in STORAGE_SHORT:
            lost_storage(settings, store, rep, exc)
        else:
            failed(settings, store, rep, exc)
    except Exception as exc:  # noqa: BLE001 - a failed job is recorded, never lost
        failed(settings, store, rep, exc)


# A volume that is full, over quota, failing, remounted read-only or a network mount gone away: no fault
# of the job's, as a database outage is none (a read-only remount had failed jobs at once: a probe)
STORAGE_SHORT = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ESTALE, errno.ENOTCONN})
STORAGE_RETRY_S = 15.0  # the write is tried again at least this often while it waits, space freed or not
STORAGE_WAIT_S = 120.0  # at most this long (and a lease) for space to be freed before the hand-back
STORAGE_FREED = 1 << 20  # bytes freed since the failure that end the wait


def lost_storage(settings: Settings, store: JobStore, rep: Reporter | None, exc: OSError) -> None:
    """A checkpoint could not be written for want of space (or on a failing volume) after ``publish``'s
    wait: the job goes back to the queue without an attempt's cost, and fails after OUTAGES_IN_A_ROW
    outages in a row. A full checkpoint volume had failed the job and its requests at once (a client's
    `.failed` webhooks), for a disk an operator freed a minute later (a probe)."""
    said = without_server_paths(one_line(exc), settings)  # the job's words; the log keeps the paths
    log.warning("job %s: storage is still short (%s); the job is handed back", store.job_id, one_line(exc))
    outages = hand_back(store, cause=STORAGE_SHORT_CAUSE, limit=OUTAGES_IN_A_ROW)
    if outages is None:
        raise LeaseLost("the database did not record the hand-back; the job resumes later") from None
    if outages >= OUTAGES_IN_A_ROW:
        end(store, rep, JobState.FAILED, f"{outages} attempts in a row ended in outages, this one for want "
            f"of storage ({said}); free space and retry the job")  # fmt: skip


def written_while_storage_lasts(settings: Settings, rep: Reporter, write: Callable[[], str]) -> str:
    """``write()``'s result; where the checkpoint volume is full or failing, the write is tried again each
    time a megabyte is freed there, and every STORAGE_RETRY_S (a volume remounted writable frees nothing; a
    small checkpoint needs less), for up to STORAGE_WAIT_S (and a lease), the job's heartbeat going on:
    a cancel, a shutdown, a lost lease or the time limit still stop it (``Reporter.waiting``). Past that
    the error goes up, and the job is handed back (``lost_storage``)."""
    deadline = time.monotonic() + min(STORAGE_WAIT_S, settings.lease_seconds)
    while True:
        try:
            return write()
        except CheckpointWriteFailed as exc:
            if exc.errno not in STORAGE_SHORT or time.monotonic() >= deadline:
                raise
            log.warning("storage is short (%s); waiting for space to write the checkpoint", one_line(exc))
            folder = settings.checkpoint_dir
            free_then, retry_at = _free_bytes(folder), min(deadline, time.monotonic() + STORAGE_RETRY_S)
            while time.monotonic() < retry_at and _free_bytes(folder) < free_then + STORAGE_FREED:
                rep.waiting()
                time.sleep(2.0)  # an outage's wait, not a test's: nothing else to do until space comes back


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def lost_database(
    settings: Settings, store: JobStore, rep: Reporter | None, exc: OperationalError | InterfaceError
) -> None:
    """A database error ended the attempt. Where the database went away, the job did nothing wrong: it
    goes back to the queue, without an attempt's cost, once the database answers (left running, it had
    waited out the lease and counted as a worker's death). Any other such error fails it."""
    if not database_gone(settings.resolved_database_url, exc):
        failed(settings, store, rep, exc)
        return
    said = one_line(exc)
    log.warning("job %s: the database went away (%s); the job is handed back", store.job_id, said)
    wait_s = max(settings.lease_seconds, OUTAGE_WAIT_S)
    outages = hand_back(store, within_s=wait_s, cause=DATABASE_GONE, limit=OUTAGES_IN_A_ROW)
    if outages is None:
        raise LeaseLost("the database did not come back in time; the job resumes later") from None
    if outages >= OUTAGES_IN_A_ROW:  # an error that only looks like an outage would loop for ever
        # the driver's words name the database's host and port: the job's error (every key of the tenant
        # reads it) names the error's kind; the worker's log above has the rest (a review)
        end(store, rep, JobState.FAILED, f"the database connection was lost in {outages} attempts in a "
            f"row, or other outages ended them ({type(exc).__name__}; the worker's log has the driver's "
            "words); retry the job once it is stable")  # fmt: skip


HAND_BACK_S = 8.0  # a stopping worker's tries at recording its hand-back, within a deploy's 10 s grace
# How long a job a database outage stopped waits for the database to hand itself back. Waiting past the
# lease is safe: the hand-back is fenced, and another worker that took the job over makes it LeaseLost.
OUTAGE_WAIT_S = 60.0
# Attempts in a row a lost connection may end before the job fails: each costs none, so an error that
# only looks like an outage (a proxy killing one statement every time) would otherwise never end it.
OUTAGES_IN_A_ROW = 3


def failed(settings: Settings, store: JobStore, rep: Reporter | None, exc: BaseException) -> None:
    log.warning("job %s failed", store.job_id, exc_info=exc)  # the whole story, for the operator
    end(store, rep, JobState.FAILED, error_text(exc, settings))


def hand_back(
    store: JobStore, within_s: float = HAND_BACK_S, cause: str = STOPPED, limit: int | None = None
) -> int | None:
    """``store.give_back``, tried again while the database does not answer (a deploy during a failover):
    a stop that cannot be recorded reads as a death to the next worker and costs the job an attempt. Past
    ``within_s`` it is left at that (None). Returns how many attempts in a row ended so."""
    return retried(lambda: store.give_back(cause, limit), store.job_id, "hand-back", within_s)


def retried(write: Callable[[], T], job_id: str, what: str, within_s: float) -> T | None:
    """``write()``, tried again every half second while the database does not answer, for ``within_s``
    (``HAND_BACK_S`` once the worker is told to stop: an outage's minute outlasted a deploy's grace, and
    the kill cost the same as leaving); None past that (logged)."""
    start = time.monotonic()
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError):
            waited = time.monotonic() - start
            if waited >= within_s or (shutting_down() and waited >= HAND_BACK_S):
                log.warning("job %s: the %s could not be recorded; it counts as a death", job_id, what)
                return None
            time.sleep(0.5)


def database_gone(url: str, exc: OperationalError | InterfaceError) -> bool:
    """Whether a database error was the database going away (a restart, a failover, the network), which
    is no fault of the job's, rather than a statement it refused (a schema a migration has not reached).
    SQLAlchemy marks an error that lost its connection; one raised while connecting is told apart by
    asking the database again. SQLite has no server to lose: its errors (a lock held too long) are the
    job's, and asking again would wait on the same lock."""
    if getattr(exc, "connection_invalidated", False):
        return True
    if url.startswith("sqlite"):
        return False
    try:
        with session_scope(url) as s:
            s.execute(text("SELECT 1"))
    except (OperationalError, InterfaceError):
        return True
    return False


ERROR_CHARS = 1000


def error_text(exc: BaseException, settings: Settings | None = None) -> str:
    """The one line a failed job and its requests show the client. An error raised in a DataLoader
    reader process arrives re-raised with that process's whole traceback in its message ("Caught
    FileNotFoundError in DataLoader worker process 0. Original Traceback ..."), which names our code
    and not the problem: its last line is the original error ("FileNotFoundError: [Errno 2] No such
    file or directory: '.../img-0150.png'")."""
    if isinstance(exc, StatementError):
        # its text goes on to the SQL statement and its parameters, which any key of the tenant would then
        # read in the job's error (a probe's showed an INSERT into the audit log): the database's own words
        said = (str(exc.orig if exc.orig is not None else exc).strip().splitlines() or ["?"])[0]
        return f"{type(exc).__name__}: the database refused a statement: {said}"[:ERROR_CHARS]
    text = str(exc).strip()
    wrapped = "Original Traceback" in text
    text = text.splitlines()[-1].strip() if wrapped else f"{type(exc).__name__}: {text}"
    text = without_server_paths(text, settings) if settings is not None else text
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def without_server_paths(text: str, settings: Settings) -> str:
    """``text`` with the service's own folders named rather than spelt out: a job's error is read by every
    key of its tenant, and a checkpoint's or an uploaded file's absolute path told them how the server's
    disks are laid out. A file under a data root the client registered keeps its path: the client named
    it (a folder that holds a data root, or is the root of the file system, is left alone). A folder is
    matched whole, up to a path separator or the end of the path, deepest first, as configured and as
    resolved. The operator's log keeps the whole error."""
    roots = [r.resolve() for r in settings.data_roots]
    named: dict[str, str] = {}
    for folder, name in (
        (settings.dataset_dir, "<uploaded datasets>"),
        (settings.checkpoint_dir, "<checkpoints>"),
        (settings.resolved_feature_store_dir, "<front rows>"),
        (settings.var_dir, "<state folder>"),
    ):
        for spelt in (folder, folder.resolve()):
            if len(spelt.parts) > 1 and not any(r == spelt or r.is_relative_to(spelt) for r in roots):
                named.setdefault(str(spelt), name)
    for spelt_out in sorted(named, key=len, reverse=True):
        # whole: not inside a longer name on either side (/mnt/data is not /data), a sentence's full stop
        # after it allowed
        edges = (r"(?<![\w./-])", r"(?=/|[^\w.-]|\.(?:\s|$)|$)")
        text = re.sub(edges[0] + re.escape(spelt_out) + edges[1], named[spelt_out], text)
    return text


def end(store: JobStore, rep: Reporter | None, state: JobState, error: str) -> None:
    """Close a job that did not complete, with where it stopped and where its time went; tried again
    while the database does not answer (an outage here left the job running, to be resumed as a death
    and run again from the start), and past that the job's lease runs out as before."""
    phase, progress = rep.where() if rep else (None, None)
    timings = rep.finished_timings() if rep else None

    def close() -> bool:
        store.close(state, error=error, timings=timings, phase=phase, progress=progress)
        return True

    if retried(close, store.job_id, "close", HAND_BACK_S) is None:
        raise LeaseLost("the job's end could not be recorded; it resumes when its lease runs out")


def train_share(method: str, raw: dict[str, Any], recipe: dict[str, Any]) -> float:
    """The share of the weights a run of ``method`` with ``raw`` params trains (0: the whole model), so
    the front it reads rows through is known before it runs (``workers.front_cache``)."""
    return float(getattr(parse_params(method, with_recipe(method, raw, recipe)), "train_share", 0))


def split(
    train: SampleDataset, new_ids: list[str], forgotten: set[str]
) -> tuple[SampleDataset, SampleDataset]:
    """D_f = the newly forgotten samples; D_r = the training set minus everything forgotten so far."""
    forget_idx = train.index_of(new_ids)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[forget_idx] = False
    if forgotten:
        keep[train.index_of(sorted(forgotten))] = False
    return train.subset(forget_idx), train.subset(torch.nonzero(keep).flatten())


def with_class_remnants(
    train: SampleDataset, forget: SampleDataset, forgotten: set[str], taken: list[int]
) -> SampleDataset:
    """D_f for the method: with the rows earlier jobs forgot of each class this job takes whole. Those
    jobs unlearned them as rows of a class that stayed (recognised about as unseen rows of it are), and
    the class run, which pushes until a class is forgotten, read only the rows left: a probe's 39 of 40
    rows, then the last one, ended with the class still predicted for 52% of its test rows (the version
    refused, a retry refused alike). They were forgotten already: the run only reads them."""
    if not taken or not forgotten:
        return forget
    labels = train.y.tolist()
    remnants = [i for i, y in zip(train.ids, labels, strict=True) if y in taken and i in forgotten]
    if not remnants:
        return forget
    return train.subset(train.index_of([*forget.ids, *remnants]))


def flagged(forget: SampleDataset, mislabeled_ids: set[str]) -> torch.Tensor | None:
    """(n_f,) bool: the forget rows a request with reason "mislabeled" named; None when there are none,
    and every row is unlearned as an erasure."""
    if not mislabeled_ids.intersection(forget.ids):
        return None
    return torch.tensor([i in mislabeled_ids for i in forget.ids], dtype=torch.bool)


def _run(settings: Settings, ctx: JobContext, store: JobStore, rep: Reporter) -> None:
    device = resolve_device(settings.device)
    new_ids = [i for i in ctx.claimed_ids if i not in ctx.forgotten]
    if not new_ids:  # every ID was already forgotten: complete as a no-op on the current version
        store.close(JobState.COMPLETED, result_version=ctx.base_version)
        return

    rep.phase(JobPhase.LOAD, 0.0, 0.05)

    def load(ref: DatasetRef) -> SampleDataset:
        return load_registered(ref, workers=settings.loader_workers, keep_bytes=settings.dataset_cache_bytes)

    train, test = load(ctx.train), load(ctx.test)
    parts = held_out(test, load(ctx.heldout) if ctx.heldout else None)
    data_roles = roles(parts, ctx.test_name, ctx.heldout_name)
    data_roles["cpu_threads"] = cpu_threads(settings.torch_threads)
    base_model = build_model(ctx.architecture, **{"num_classes": ctx.num_classes, **ctx.arch_kwargs})
    load_weights(base_model, ctx.base_uri, sha256=ctx.base_sha256, device=device)
    base_model.to(device)
    forget, retain = split(train, new_ids, ctx.forgotten)
    mislabeled = flagged(forget, ctx.mislabeled_ids)
    if mislabeled is not None:
        data_roles["mislabeled_rows"] = int(mislabeled.sum())
    if len(retain) == 0:  # claims keep this from coalesced requests; a job from before that still can
        end(store, rep, JobState.FAILED, NOTHING_LEFT)
        return
    classes = forgotten_classes(train.y, retain.y)
    earlier = sorted(set(classes or ()) - set(forget.y.tolist()))  # taken whole by earlier jobs: kept off
    taken = sorted(set(classes or ()) - set(earlier))  # taken whole by this job: what the class gate judges
    unlearn = with_class_remnants(train, forget, ctx.forgotten, taken)  # D_f as the method reads it
    if len(unlearn) > len(forget):
        data_roles["class_rows_forgotten_earlier"] = len(unlearn) - len(forget)
    unlearn_flags = mislabeled if unlearn is forget else flagged(unlearn, ctx.mislabeled_ids)

    cache = front_cache.feature_cache(settings)
    rows, test_rows = front_cache.source(ctx.train), front_cache.source(ctx.test)
    kept_before = dataclasses.replace(cache.stats) if cache is not None else None  # the first attempt's
    # counts take in the base version's scoring, which reads the rows first

    def score(
        model: torch.nn.Module,
        share: float,
        kept: SetScores | None = None,
        train_rows: kept_rows.Reader | kept_rows.Recorder | None = None,
    ) -> tuple[dict[str, Any], SetScores]:
        # Graded only on data the method never read: the scoring part of the held-out data. Rows through
        # the front's kept outputs where the method trains the last layers at ``share``; the training
        # rows read back from the job that published the base, or recorded for the next job
        # (``kept_rows``).
        on_train, on_test = front_cache.scorers(model, share, cache, rows, test_rows)
        if train_rows is not None:
            on_train = train_rows.through(on_train or functools.partial(score_set, model))
        test_scores = (
            kept if kept is not None else (on_test or functools.partial(score_set, model))(parts.scoring)
        )
        metrics = evaluate(
            model,
            forget=forget,
            retain=retain,
            test=parts.scoring,
            forgotten_classes=classes,
            test_scores=test_scores,
            train_scores=on_train,
            forget_flagged=mislabeled,
            judged_classes=taken if classes else None,
        )
        return dict(metrics), test_scores

    rep.phase(JobPhase.EVALUATE_BASE, 0.05, 0.1)
    key = kept_scores.scoring_key(ctx.test, parts, torch.device(device))
    kept = kept_scores.read(
        kept_scores.path_for(settings.checkpoint_dir, ctx.model_id, ctx.base_uri, key),
        len(parts.scoring),
        ctx.base_test_scores_sha256,
    )
    base_rows = kept_rows.Reader((ctx.base_uri, ctx.base_sha256), rows, torch.device(device))
    base_metrics, _ = score(
        base_model, train_share(ctx.method, ctx.params, ctx.train_recipe), kept, base_rows
    )
    data_roles["base_test_scores"] = "kept" if kept is not None else "scored"
    data_roles["base_train_rows"] = base_rows.counts

    chain = [(ctx.method, ctx.params), *((m, {}) for m in ctx.fallback_methods)]
    mostly = most_of_a_class(forget.y, retain.y)
    if retrain_instead(ctx.retrain_above_share, len(forget), len(forget) + len(retain)):
        chain = [("retrain", {})]
        data_roles["retrained_above_share"] = ctx.retrain_above_share
    elif ctx.retrain_above_class_share is not None and mostly and mostly[1] >= ctx.retrain_above_class_share:
        chain = [("retrain", {})]
        data_roles["retrained_above_class_share"] = {
            "share": ctx.retrain_above_class_share,
            "class": mostly[0],
            "taken": round(mostly[1], 6),
        }
    # the base's numbers stand even if no attempt ends (a time limit, a cancel, a method that raises)
    store.record_attempt(base_metrics, None, [], data_roles, ctx.gates)
    attempts: list[dict[str, Any]] = []
    span = 0.85 / len(chain)
    for i, (method, raw_params) in enumerate(chain):
        lo = 0.1 + i * span
        params = parse_params(
            method, with_recipe(method, raw_params, ctx.train_recipe, layer_norm=layer_normed(base_model))
        )
        as_dict = params_to_dict(params)
        store.trying(method, as_dict)  # every param in effect, defaults included, while it runs
        runs: list[dict[str, Any]] = []  # what each run of the method decided: its steps, rows, sizing
        kept_before = dataclasses.replace(cache.stats) if cache is not None and i else kept_before
        try:  # from its start to its scores: an attempt that does not get there is kept with why
            rep.phase(method_phase("unlearn", method), lo, lo + 0.8 * span)
            hooks = Hooks(progress=rep.report, should_cancel=rep.cancelled, on_plan=runs.append)
            if cache is not None and rows is not None:
                hooks.front_features = cache.bound(rows)
            started = time.perf_counter()
            with precision(settings.precision, device):
                model = run_method(method, copy.deepcopy(base_model), unlearn, retain, params, hooks,
                                   heldout=parts.calibration, mislabeled=unlearn_flags)  # fmt: skip
            synchronize(device)
            runtime = time.perf_counter() - started
            silenced = silence_classes(model, earlier, retain) if method != "retrain" else []
            rep.phase(method_phase("evaluate", method), lo + 0.8 * span, lo + span)
            recorded = kept_rows.Recorder()
            broken = non_finite_weights(model, base_model)
            if broken is None:
                try:
                    share = float(getattr(params, "train_share", 0))
                    scored, test_scores = score(model, share, train_rows=recorded)
                except NonFiniteOutputs as exc:
                    broken = str(exc)
        except (WorkerStopping, LeaseLost):
            raise  # the job goes on elsewhere: nothing of this attempt is final
        except Exception as exc:  # timed out, cancelled or raised: the attempt is kept with why it ended
            attempt = {"method": method, "params": as_dict, "runs": runs, "error": error_text(exc, settings)}
            keep_unfinished(store, base_metrics, [*attempts, {**attempt, "passed": False}], data_roles, ctx)
            raise
        if broken is not None:  # a run that diverged is judged as one that failed its gates: next method
            metrics: dict[str, Any] = {"runtime_s": runtime}
            failures = [f"diverged: {broken}"]
        else:
            metrics = {**scored, "runtime_s": runtime}
            failures = gates.check(ctx.gates, base_metrics, metrics, method, ctx.reference_test)
        attempts.append(
            {
                "method": method,
                "params": as_dict,
                "runs": runs,
                "metrics": metrics,
                "gate_failures": failures,
                "passed": not failures,
                **({"silenced_classes": silenced} if silenced else {}),
                **(
                    {"warnings": w}
                    if (
                        w := attempt_warnings(
                            method,
                            taken,
                            metrics,
                            runs,
                            base_metrics,
                            mostly,
                            ctx.retrain_above_class_share,
                        )
                    )
                    else {}
                ),
                **front_rows(cache, kept_before),
            }
        )
        store.record_attempt(base_metrics, metrics, attempts, data_roles, ctx.gates)
        if not failures:
            rep.phase(JobPhase.PUBLISH, 0.95, 1.0)
            failpoints.hit("publish.started")
            for ref in (ctx.train, ctx.test, ctx.heldout):  # what was read is what was registered
                if ref is not None:
                    recheck_registered(ref)
            checkpoint = publish(
                settings, ctx, store, rep, model, new_ids, metrics, (key, test_scores), method, as_dict
            )
            kept_rows.keep(checkpoint, rows, torch.device(device), recorded)
            if cache is not None and rows is not None:  # every row the model forgot: a purge that an
                forget_front_rows(cache, rows, set(new_ids) | ctx.forgotten)  # earlier kill cut short too
            return
    reasons = "; ".join(f"{a['method']}: {', '.join(a['gate_failures'])}" for a in attempts)
    why = f"every method failed its gates ({reasons})"
    if "retrained_above_share" in data_roles:  # the chain a client set was not tried: say why
        why = (
            f"the exact retrain failed its gates ({reasons}); the deletion took at least the model's "
            f"retrain_above_share ({ctx.retrain_above_share}) of its training samples, so it alone was tried"
        )
    elif mostly and "retrained_above_class_share" in data_roles:
        why = (
            f"the exact retrain failed its gates ({reasons}); the deletion took {mostly[1]:.1%} of class "
            f"{mostly[0]}'s training samples, at least the model's retrain_above_class_share "
            f"({ctx.retrain_above_class_share}), so it alone was tried"
        )
    end(store, rep, JobState.FAILED, why)


def forget_front_rows(cache: front_cache.FeatureCache, source: str, ids: set[str]) -> None:
    """The forgotten rows' front outputs are kept nowhere (``FeatureCache.forget``). Run once the job is
    published, so its client does not wait for it; a failure (the store's disk) is logged, and the job
    stays completed."""
    started = time.perf_counter()
    try:
        dropped = cache.forget(source, ids)
    except Exception:  # noqa: BLE001 - the version is published; the store is a cache
        log.warning("forgotten rows not purged from the feature store", exc_info=True)
        return
    log.info("%d forgotten rows left the feature store (%.2f s)", dropped, time.perf_counter() - started)


STILL_PREDICTED = 0.01  # a forgotten class's share of its test rows still predicted that is worth a word


def attempt_warnings(
    method: str,
    classes: list[int] | None,
    metrics: dict[str, Any],
    runs: Sequence[Mapping[str, Any]] = (),
    base: Mapping[str, Any] | None = None,
    mostly: tuple[int, float] | None = None,
    class_share: float | None = None,
) -> list[str]:
    """What an attempt's numbers say that its gates may not judge. A retrain predicts a flagged row as
    whatever the rest of the data teaches, which is what a deletion of it should end with."""
    if method == "retrain":
        return still_predicted(classes, metrics)
    flagged = still_labelled(metrics) + agreed_flags(metrics, runs, base or {})
    return still_predicted(classes, metrics) + flagged + most_taken(mostly, class_share)


def retrain_instead(share: float | None, n_forget: int, n_left: int) -> bool:
    """Whether a deletion of ``n_forget`` of the ``n_left`` training samples the model has left is retrained
    exactly instead of running the model's method chain (its ``retrain_above_share``). Why: a run is sized
    per forget sample, so its cost grows with the deletion while a retrain's shrinks with what stays; at
    half of digits' or an MLP's training set the default cost 52-89% of a retrain and closed 36-49% of the
    gap to it (README, "Large deletions")."""
    return share is not None and n_left > 0 and n_forget / n_left >= share


def most_of_a_class(forget_y: torch.Tensor, retain_y: torch.Tensor) -> tuple[int, float] | None:
    """The class of which the deletion takes the largest share of the training samples left, and that
    share, among classes it does not take whole (a class taken whole is forgotten as a retrain forgets it,
    99-100% of the gap on every setting measured); None where it takes none such."""
    if len(forget_y) == 0:
        return None
    k = int(max(int(forget_y.max()), int(retain_y.max()) if len(retain_y) else 0)) + 1
    taken = torch.bincount(forget_y.cpu(), minlength=k).double()
    kept = torch.bincount(retain_y.cpu(), minlength=k).double()
    share = torch.where(kept > 0, taken / (taken + kept).clamp(min=1), torch.zeros_like(kept))
    c = int(share.argmax())
    return (c, float(share[c])) if share[c] > 0 else None


MOST_OF_A_CLASS = 0.5  # a deletion taking more of a class than this is one the method falls short on


def most_taken(mostly: tuple[int, float] | None, policy: float | None = None) -> list[str]:
    """A warning when an unlearning run served a deletion that took most, not all, of a class: where a
    client compared, a deep network's retrain forgot such rows far more than the run did (a ShuffleNet's
    90% of a class: 11% of them recognised against 65%), and no gate measures it (README, Where it falls
    short); ``retrain_above_class_share`` sends such deletions to an exact retrain."""
    if mostly is None or mostly[1] <= MOST_OF_A_CLASS:
        return []
    c, share = mostly
    set_to = "" if policy is None else f" (set to {policy:g}, above this deletion's share)"
    return [
        f"the deletion took {share:.1%} of class {c}'s training samples left; on deep networks a retrain "
        "forgets such rows more than unlearning does (README, Where it falls short): the model's "
        f"retrain_above_class_share{set_to} sends such deletions to an exact retrain"
    ]


def still_predicted(classes: list[int] | None, metrics: dict[str, Any]) -> list[str]:
    """A warning when a deletion took whole classes and the result still predicts them for more than
    STILL_PREDICTED of their test rows: a retrain never predicts a class it never saw. The method's
    reruns stop at a cap (a probe's wine MLP still knew 4 of its 35 forgotten rows), and the attempt said
    nothing; the gates judge it, this says it."""
    share = metrics.get("forgotten_class_test_accuracy")
    if not classes or share is None or share <= STILL_PREDICTED:
        return []
    named = ", ".join(str(c) for c in classes)
    rows = metrics.get("forgotten_class_test_count")
    return [
        f"forgotten class {named} is still predicted for {share:.1%} of its {rows} test rows; "
        "a retrain never predicts it (the gate max_forgotten_class_accuracy can require that)"
    ]


def still_labelled(metrics: dict[str, Any]) -> list[str]:
    """A warning when rows sent as mislabeled are still predicted as the label they were sent with. An
    unlearning run moves a flagged row (towards its neighbours' class, or off its label where they agree
    with it) for one sized run, with no rerun: a probe's two confident digits kept their labels (p 0.93)
    while the job said nothing; the README had promised they would be moved until the model predicted
    another class."""
    share, rows = metrics.get("flagged_label_accuracy"), metrics.get("flagged_count")
    if not share or not rows:
        return []
    kept = round(share * rows)
    return [
        f"{kept} of the {rows} rows sent as mislabeled are still predicted as the label they were sent with: "
        "the run moves flagged rows for one sized run only"
    ]


AGREED_SHARE = 0.5  # of the rows sent as mislabeled, the share pushed off a label their neighbours hold


def agreed_flags(
    metrics: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], base: Mapping[str, Any]
) -> list[str]:
    """A warning when most rows sent as mislabeled are ones whose neighbours in the model's features hold
    the label they were sent with (a run's ``away_rows``) and test accuracy, overall or on the classes
    they were sent with, fell by more than its noise (two standard errors): the run pushes such rows off
    their label, as it must a backdoor's poisoned rows (which leaves test accuracy where it was), and rows
    whose labels were right lose what the model knew of them. A probe that sent a subject's 25 correctly
    labelled rows as mislabeled (23 pushed away) lost 5.5 points of test accuracy, within the default
    gate, and the only word was that some rows "are still predicted" as their label, which reads as too
    little forgetting."""
    rows = metrics.get("flagged_count")
    away = max((int(r.get("away_rows", 0)) for r in runs), default=0)
    if not rows or away < AGREED_SHARE * rows:
        return []
    fell = []
    for what, count, said in (
        ("test_accuracy", "test_count", "test accuracy"),
        # a client's 60 right rows of one class cost that class 32 points and all classes 0.8 (a probe)
        ("flagged_classes_test_accuracy", "flagged_classes_test_count", "test accuracy on their classes"),
    ):
        before, after, n = base.get(what), metrics.get(what), metrics.get(count)
        if before is None or after is None or not n:
            continue
        if before - after > 2 * math.sqrt(max(before * (1 - before), 1 / n) / n):
            fell.append(f"{said} fell from {before:.4f} to {after:.4f}")  # each named (a probe)
    if not fell:
        return []
    return [
        f"{away} of the {rows} rows sent as mislabeled have neighbours in the model that hold the label "
        f"they were sent with, and {' and '.join(fell)}: the run pushed them off that label, as it "
        "does a backdoor's poisoned rows. Where those labels are right, send the rows with reason erasure "
        "instead"
    ]


def non_finite_weights(model: torch.nn.Module, base: torch.nn.Module) -> str | None:
    """What is wrong with a model whose weights or buffers became NaN or infinite where its base's were
    finite (a run that diverged: an lr far too large, ascent left unbounded), or None. Caught before
    scoring, whose attack would fail on such a model with an error naming a scikit-learn classifier. A
    value the base already held (-inf masking a class, an attention mask) is the architecture's."""
    total = bad = 0
    pairs = zip((*model.parameters(), *model.buffers()), (*base.parameters(), *base.buffers()), strict=True)
    for t, was in pairs:
        if t.is_floating_point():
            total += t.numel()
            bad += int((~torch.isfinite(t) & torch.isfinite(was.to(t.device))).sum())
    return f"{bad:,} of its {total:,} weights are NaN or infinite" if bad else None


def keep_unfinished(
    store: JobStore,
    base: dict[str, Any],
    attempts: list[dict[str, Any]],
    data: dict[str, Any],
    ctx: JobContext,
) -> None:
    """Record the attempts with the one that did not end, on the way out: the job's own failure is
    recorded next, and an error here (the database, the lease) must not take its place."""
    try:
        store.record_attempt(base, None, attempts, data, ctx.gates)
    except Exception:  # noqa: BLE001 - the job's end matters more than this record
        log.warning("job %s: the unfinished attempt could not be recorded", store.job_id, exc_info=True)


def front_rows(cache: FeatureCache | None, before: CacheStats | None) -> dict[str, Any]:
    """Rows this attempt's runs and scorings (the first attempt's with the base version's) passed through
    a frozen front, rows they read back from the process's cache (``workers.front_cache``), and rows that
    cache read in from the store on disk (computed by this or another process): an audit of how a job's
    cost came about."""
    if cache is None or before is None:
        return {}
    return {
        "front_rows": {
            "computed": cache.stats.computed - before.computed,
            "kept": cache.stats.read - before.read,
            "from_store": cache.stats.loaded - before.loaded,
        }
    }


def publish(
    settings: Settings,
    ctx: JobContext,
    store: JobStore,
    rep: Reporter,
    model: torch.nn.Module,
    new_ids: list[str],
    metrics: dict[str, Any],
    scores: tuple[str, SetScores],
    method: str,
    params: dict[str, Any],
) -> tuple[str, str]:
    """Write the checkpoint and keep the version's test scores (``kept_scores``: the next job's base
    reads them), then commit the version, and return its checkpoint's URI and sha256. A crash before the
    commit leaves at most orphan files, never a half version; a refused commit removes the files it would
    have pointed to, once the database confirms no version points at them (a commit cut off mid-way may
    have landed)."""
    path = version_path(settings.checkpoint_dir, ctx.model_id, ctx.base_version + 1, ctx.job_id)
    write = functools.partial(
        save_checkpoint,
        model.cpu(),
        path,
        architecture=ctx.architecture,
        # num_classes in the kwargs too, so `load_checkpoint` rebuilds it alone: a builder's default
        # (10 for the built-ins, 1000 for torchvision and timm) is not the model's.
        kwargs={"num_classes": ctx.num_classes, **ctx.arch_kwargs},
        num_classes=ctx.num_classes,
        extra={"version": ctx.base_version + 1, "job_id": ctx.job_id},
    )
    sha256 = written_while_storage_lasts(settings, rep, write)
    key, test_scores = scores
    scores_path = kept_scores.path_for(settings.checkpoint_dir, ctx.model_id, str(path), key)
    if (scores_sha256 := kept_scores.write(scores_path, test_scores)) is not None:
        metrics = {**metrics, kept_scores.RECORD_KEY: scores_sha256}
    failpoints.hit("publish.before_commit")
    try:
        rep.flush()  # proves we still hold the lease right before committing
        store.publish(
            ctx,
            checkpoint_uri=str(path),
            sha256=sha256,
            new_ids=new_ids,
            metrics=metrics,
            timings=rep.finished_timings(),
            method=method,
            params=params,
        )
    except BaseException:
        if store.may_delete_checkpoint(str(path)):
            path.unlink(missing_ok=True)
            scores_path.unlink(missing_ok=True)
        raise
    return str(path), sha256
