"""The hyper-parameter search: one Optuna study per dataset version, one MLflow run per trial.

The study lives in Optuna's RDB storage under a name derived from the data hash and the
search configuration, so re-running on unchanged data adds no trials, and several
processes pointed at the same storage add trials to the same study.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric as Measurement
from mlflow.entities import Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from driftloop.data import TrainingSet
from driftloop.metrics import Metric, metric_named
from driftloop.settings import Settings
from driftloop.training import (
    DEFAULT_TRIALS,
    RUNG_FACTOR,
    SEARCH_SPACE_VERSION,
    Folds,
    FoldScorer,
    Rungs,
    climb_rungs,
    cross_validate,
    limited_threads,
    suggest_params,
    task_kind,
)

PARENT_RUN_ATTR = "mlflow_parent_run_id"
_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    parent_run_id: str
    best_params: dict[str, Any]
    metric: str  # what `best_cv_score` and `best_so_far` are in
    best_cv_score: float
    complete: int
    pruned: int
    failed: int
    new_trials: int
    best_so_far: tuple[float, ...]
    seconds: float

    @property
    def trials_per_minute(self) -> float:
        return 60 * self.new_trials / self.seconds if self.seconds > 0 else 0.0


def study_name(settings: Settings, data_hash: str, metric: str, first_rung: int = 0) -> str:
    """The metric is part of the name: trials scored by another metric are another study,
    and so are trials scored on rungs (`-rungs<first>x<factor>`) rather than k folds."""
    rungs = f"-rungs{first_rung}x{RUNG_FACTOR}" if first_rung else ""
    return (
        f"{settings.model_name}-{data_hash[:12]}-{metric}-space{SEARCH_SPACE_VERSION}"
        f"-k{settings.cv_folds}-n{settings.n_trials}-seed{settings.seed}{rungs}"
    )


def open_study(
    settings: Settings, name: str, metric: Metric | None = None, first_rung: int = 0
) -> optuna.Study:
    """The study `name`, created to optimise `metric` in its direction if it is new; without
    a metric, an existing study (KeyError if there is none), as a reader opens it. With
    `first_rung` rows, trials are pruned by successive halving on rows (`Rungs`)."""
    if settings.optuna_storage is None:
        settings.home.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "study_name": name,
        "storage": settings.optuna_storage_url,
        # Workers sharing a study need their own seeds, and the constant liar keeps them
        # from proposing the same point while each other's trials are still running.
        "sampler": optuna.samplers.TPESampler(
            seed=settings.seed + settings.hpo_worker, constant_liar=True
        ),
        # Each fold is a step: a trial whose running mean is worse than the median of
        # earlier trials at the same fold (in the study's direction) stops there. On rungs
        # the step is the rows fitted: a trial goes on to `RUNG_FACTOR` times the rows
        # only while it is in the best 1/RUNG_FACTOR of the trials scored on its rung.
        "pruner": optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first_rung, reduction_factor=RUNG_FACTOR, min_early_stopping_rate=0
        )
        if first_rung
        else optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
    }
    if metric is None:
        return optuna.load_study(**common)
    study = optuna.create_study(**common, load_if_exists=True, direction=metric.direction)
    study.set_user_attr("metric", metric.name)
    return study


def run_search(
    training: TrainingSet,
    settings: Settings,
    experiment_id: str,
    run_tags: dict[str, str],
    progress: Callable[[str], None] = print,
) -> SearchResult:
    """Run the trials this study still lacks; each becomes a child of the study's parent run.

    Small data is scored by k-fold CV on all rows. From `3 * settings.hpo_rung_rows` fit
    rows on, a trial climbs rungs of growing subsamples (`Rungs`, up to 300k rows) and
    successive halving stops most of them on a small rung, so the search's cost grows far
    slower than the rows; the candidate is refit on all rows either way
    (`register_candidate`).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    client = MlflowClient(settings.mlflow_tracking_uri)
    metric = metric_named(training.schema.metric)
    x, y = training.xy(training.train)
    rungs = Rungs(training.schema, x, y, settings.hpo_rung_rows, settings.seed)
    first_rung = rungs.first if len(rungs) else 0
    name = study_name(settings, training.data_hash, metric.name, first_rung)
    study = open_study(settings, name, metric, first_rung)
    parent_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent_id is None:
        parent = client.create_run(
            experiment_id,
            run_name=f"train-{training.version}",
            tags={
                **run_tags,
                "driftloop.metric": metric.name,
                "driftloop.metric_direction": metric.direction,
            },
        )
        parent_id = parent.info.run_id
        study.set_user_attr(PARENT_RUN_ATTR, parent_id)
    if settings.hpo_worker == 0:  # one writer: the check-then-insert is not atomic
        for params in DEFAULT_TRIALS[task_kind(training.schema.task)]:
            study.enqueue_trial(params, skip_if_exists=True)
    local_folds: Folds | Rungs = (
        rungs if first_rung else Folds(training.schema, x, y, settings.cv_folds, settings.seed)
    )
    finished_before = _count(study, *_FINISHED)
    remaining = settings.n_trials - finished_before

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, training.schema.task)
        child = client.create_run(
            experiment_id,
            tags={MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: f"trial-{trial.number}"},
        )
        fold_scores: list[Measurement] = []

        def report(value: float, step: int) -> None:
            now = int(time.time() * 1000)
            running = f"rung_{metric.name}" if first_rung else f"cv_{metric.name}_running"
            fold_scores.append(Measurement(running, value, now, step))
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        state = "FAILED"
        try:
            score = (
                climb_rungs(params, folds, rungs.sizes, report)
                if first_rung
                else cross_validate(params, folds, report)
            )
            state = "COMPLETE"
            fold_scores.append(Measurement(f"cv_{metric.name}", score, int(time.time() * 1000), 0))
            return score
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            client.log_batch(
                child.info.run_id,
                metrics=fold_scores,
                params=[Param(k, str(v)) for k, v in params.items()],
                tags=[RunTag("optuna.trial", str(trial.number)), RunTag("optuna.state", state)],
            )
            client.set_terminated(child.info.run_id, "FAILED" if state == "FAILED" else "FINISHED")

    def announce(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        best = study.best_value if _count(study, optuna.trial.TrialState.COMPLETE) else float("nan")
        value = f"{trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
        progress(f"trial {trial.number + 1}/{settings.n_trials}: {value} (best {best:.4f})")

    started = time.perf_counter()
    if remaining > 0:
        parallel = min(settings.hpo_parallel, remaining)
        # Queued trials one at a time: two Optuna threads can claim the same queued trial
        # (seen in CI: "Cannot tell a COMPLETE trial"), then the rest in parallel.
        queued = min(_count(study, optuna.trial.TrialState.WAITING), remaining)
        deadline = None if settings.hpo_timeout_s is None else started + settings.hpo_timeout_s
        with fold_scorer(local_folds, parallel, settings.train_threads) as folds:
            for jobs, count in ((1, queued), (parallel, remaining - queued)):
                if count > 0:
                    study.optimize(
                        objective,
                        n_trials=count,
                        timeout=None
                        if deadline is None
                        else max(0.0, deadline - time.perf_counter()),
                        n_jobs=jobs,
                        callbacks=[announce],
                        catch=(ValueError,),
                    )
    seconds = time.perf_counter() - started
    if _count(study, optuna.trial.TrialState.COMPLETE) == 0:
        raise RuntimeError(f"study {name} has no complete trial; see the trial runs' errors")
    result = SearchResult(
        study_name=name,
        parent_run_id=parent_id,
        best_params=dict(study.best_trial.params),
        metric=metric.name,
        best_cv_score=float(study.best_value),
        complete=_count(study, optuna.trial.TrialState.COMPLETE),
        pruned=_count(study, optuna.trial.TrialState.PRUNED),
        failed=_count(study, optuna.trial.TrialState.FAIL),
        new_trials=_count(study, *_FINISHED) - finished_before,
        best_so_far=_best_so_far(study, metric),
        seconds=seconds,
    )
    now = int(time.time() * 1000)
    client.log_batch(
        parent_id,
        metrics=[
            Measurement("best_cv_score", result.best_cv_score, now, 0),
            Measurement(f"best_cv_{metric.name}", result.best_cv_score, now, 0),
            Measurement("trials_complete", result.complete, now, 0),
            Measurement("trials_pruned", result.pruned, now, 0),
        ],
        tags=[
            RunTag("driftloop.study", name),
            # what `best_cv_score` is: k-fold CV, or validation rows after rungs of these sizes
            RunTag("driftloop.search_rungs", ",".join(map(str, rungs.sizes)) or "none"),
        ],
    )
    return result


_WORKER_FOLDS: FoldScorer | None = None


def _adopt_folds(folds: FoldScorer, threads: int) -> None:
    global _WORKER_FOLDS
    _WORKER_FOLDS = folds
    limited_threads(threads)  # not as a context: the limit holds for the worker's life


def _score_in_worker(params: dict[str, Any], fold: int) -> float:
    assert _WORKER_FOLDS is not None, "fold worker started without its folds"
    return _WORKER_FOLDS.score(params, fold)


class _PooledFolds:
    """The same folds, fitted in worker processes that received the data once."""

    def __init__(self, pool: ProcessPoolExecutor, folds: int) -> None:
        self._pool, self._folds = pool, folds

    def __len__(self) -> int:
        return self._folds

    def score(self, params: dict[str, Any], fold: int) -> float:
        return self._pool.submit(_score_in_worker, params, fold).result()


@contextlib.contextmanager
def fold_scorer(folds: FoldScorer, parallel: int, threads: int) -> Iterator[FoldScorer]:
    """Where the fits of `parallel` concurrent trials run.

    One trial fits here. Several trials run in Optuna's threads, but their fits go to
    spawned processes: fitting in threads measured slower than one thread (GIL, pandas),
    and spawn, not fork, because the calling process has Dagster's and MLflow's threads.
    """
    if parallel <= 1:
        with limited_threads(threads):
            yield folds
        return
    with ProcessPoolExecutor(
        parallel,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_adopt_folds,
        initargs=(folds, threads),
    ) as pool:
        yield _PooledFolds(pool, len(folds))


def _count(study: optuna.Study, *states: optuna.trial.TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _best_so_far(study: optuna.Study, metric: Metric) -> tuple[float, ...]:
    """The best value after each trial, from the first complete one on."""
    better = max if metric.greater_is_better else min
    best: float | None = None
    history = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None:
            best = trial.value if best is None else better(best, trial.value)
        if best is not None:
            history.append(best)
    return tuple(history)
