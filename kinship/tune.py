"""The training recipe searched on the user's own families (``kinship tune``), with Optuna.

Invariances that augmentation imposes belong to a data set, not to kinship: a colour cast is a nuisance in one
collection and a heritable trait in another. So the recipe (augmentation strengths, loss weights, pooling grid,
width, learning rate, epochs, and scratch or a pretrained start) is chosen by the user's own validation families.

Families, by role (a keyed hash of each family id with ``TuneConfig.seed``, so a family keeps its role when others
are added):

- **held out** (``holdout_fraction``, 20%): never opened by any trial (``data.prepare(families=...)`` restricts the
  set before anything is hashed or decoded); the search's final figure is on them, beside raw pixels.
- **tuning** families, dealt into ``folds`` (4) groups: every trial trains on three and is scored (per-epoch
  validation AUC, what the pruner sees) on the fourth. One scored fold, not four: on 2 CPU cores a 20-minute budget
  affords about 50 epochs of a 400-family set in all, and scoring each trial on four folds would cut the trials
  the sampler sees to a quarter; a fold of about 80 families already separates recipes 0.02 apart.

The study lives in an Optuna storage: SQLite in the output folder by default, or any SQLAlchemy URL (the stack's
PostgreSQL), so several processes or hosts can run trials of one study. Trials carry heartbeats: a killed trial is
marked failed by the next worker and retried once; a restarted study goes on from the trials it has.
The budget counts the time of the study's trials (summed over workers), so a restart resumes the rest of it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from kinship.baseline import REQUIRED_MARGIN
from kinship.errors import UserError, first_line
from kinship.files import write_atomic
from kinship.pairs import FamilySplit
from kinship.progress import ProgressEvent, silent
from kinship.train_config import TrainConfig

log = logging.getLogger(__name__)

RECIPE_FORMAT = "kinship-recipe/1"
HEARTBEAT_SECONDS = 20  # a killed trial is failed by the next worker after 3x this without a heartbeat


def heartbeat_seconds() -> int:
    """``KINSHIP_TUNE_HEARTBEAT_S`` (default 20): how often a running trial says it is alive."""
    import os

    text = os.environ.get("KINSHIP_TUNE_HEARTBEAT_S", "").strip()
    if not text:
        return HEARTBEAT_SECONDS
    if not text.isdigit() or not 1 <= int(text) <= 3600:
        raise UserError(f"KINSHIP_TUNE_HEARTBEAT_S={text!r}: expected whole seconds from 1 to 3600")
    return int(text)


@dataclass(frozen=True)
class TuneConfig:
    """How the recipe is searched (not the recipe: that is the TrainConfig each trial suggests)."""

    budget_minutes: float = 20.0  # time of the study's trials, summed over workers
    trials: int = 0  # most trials (completed or pruned) in the study; 0 = as many as the budget allows
    holdout_fraction: float = 0.2
    folds: int = 4
    seed: int = 0
    image_size: int = 64
    device: str = "auto"
    required_margin: float = REQUIRED_MARGIN  # the best recipe must beat raw pixels by this on validation
    init: str = ""  # a pretrained model.pt the search may start from (kinship pretrain); "" = scratch only
    min_epochs: int = 6
    max_epochs: int = 16
    fixed: dict = field(default_factory=dict)  # TrainConfig fields every trial keeps (not searched)

    def validate(self) -> None:
        if not self.budget_minutes > 0:
            raise UserError(f"--budget-minutes must be above 0, got {self.budget_minutes}")
        if not 0.0 < self.holdout_fraction < 0.9:
            raise UserError(f"--holdout must be in (0, 0.9), got {self.holdout_fraction}")
        if not 2 <= self.folds <= 10:
            raise UserError(f"--folds must be between 2 and 10, got {self.folds}")
        if self.trials < 0:
            raise UserError(f"--trials must be 0 (no cap) or more, got {self.trials}")
        unknown = sorted(set(self.fixed) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise UserError(f"not TrainConfig fields: {', '.join(unknown)}")


@dataclass(frozen=True)
class FamilyRoles:
    """Which families the search may read (``folds``) and which it never opens (``held_out``)."""

    held_out: tuple[str, ...]
    folds: tuple[tuple[str, ...], ...]

    @property
    def trial_split(self) -> FamilySplit:
        """Every trial trains on all folds but the first and is scored on the first."""
        return FamilySplit(train=tuple(sorted(f for group in self.folds[1:] for f in group)), val=self.folds[0])

    @property
    def held_out_split(self) -> FamilySplit:
        return FamilySplit(train=(), val=self.held_out)

    def to_dict(self) -> dict:
        return {"held_out": list(self.held_out), "folds": [list(group) for group in self.folds]}


def family_roles(families: list[str], config: TuneConfig) -> FamilyRoles:
    """Held-out share and folds by a keyed hash of each family id: the same family keeps its role in a bigger set."""
    if len(families) < config.folds + 1:
        raise UserError(f"the recipe search needs at least {config.folds + 1} families with relationships "
                        f"(held-out + {config.folds} folds), found {len(families)}")
    ranked = sorted(families, key=lambda family: _keyed(config.seed, "role", family))
    held = max(1, min(len(families) - config.folds, round(config.holdout_fraction * len(families))))
    held_out, tuning = ranked[:held], ranked[held:]
    groups: list[list[str]] = [[] for _ in range(config.folds)]
    for position, family in enumerate(sorted(tuning, key=lambda f: _keyed(config.seed, "fold", f))):
        groups[position % config.folds].append(family)
    return FamilyRoles(tuple(sorted(held_out)), tuple(tuple(sorted(group)) for group in groups))


def _keyed(seed: int, purpose: str, family: str) -> str:
    return hashlib.sha256(f"kinship-tune|{seed}|{purpose}|{family}".encode()).hexdigest()


def related_families(data_dir: Path) -> list[str]:
    """Families with at least one relationship (listing and CSVs only: no image is opened)."""
    from kinship.layout import read_dataset

    dataset = read_dataset(Path(data_dir), verify_images=False)
    return sorted({r.p1.split("/")[0] for r in dataset.relationships})


# --- the search space ----------------------------------------------------------------------------------------

# Augmentation strengths on grids that include 0 (off) with the same chance as any other step.
AUGMENTATION_GRID = {
    "shift": (0, 8, 2), "jitter": (0.0, 0.3, 0.05), "rotate": (0.0, 20.0, 5.0), "zoom": (0.0, 0.2, 0.05),
    "colour": (0.0, 0.2, 0.05), "blur": (0.0, 0.6, 0.15), "noise": (0.0, 0.1, 0.025), "erase": (0.0, 0.5, 0.125),
}
LOSS_WEIGHTS = {"identity_weight": (0.0, 0.3, 1.0, 2.0), "contrastive_weight": (0.0, 0.5, 1.0, 2.0)}
POOL_GRIDS = (1, 2, 4)
WIDTHS = (16, 32)
LR_RANGE = (1e-3, 1e-2)

# Starting points, tried first: the shipped defaults, the earlier recipe (mild augmentation, which scored best on
# the outside generator), and the earlier recipe with a 2x2 pooling grid (which helped the eigen style).
EARLIER_RECIPE = {"shift": 4, "jitter": 0.1, "rotate": 0.0, "zoom": 0.0, "colour": 0.0, "blur": 0.0, "noise": 0.0,
                  "erase": 0.0, "identity_weight": 0.3, "contrastive_weight": 1.0, "epochs": 16}


STARTING_NAMES = ("defaults", "earlier recipe", "earlier recipe, 2x2 pooling")


def starting_points(config: TuneConfig) -> list[dict]:
    defaults = TrainConfig()
    searched = [*AUGMENTATION_GRID, *LOSS_WEIGHTS, "flip", "pool_grid", "width", "lr", "epochs"]
    first = {name: getattr(defaults, name) for name in searched}
    points = [first, {**first, **EARLIER_RECIPE}, {**first, **EARLIER_RECIPE, "pool_grid": 2}]
    for point in points:
        point["epochs"] = min(config.max_epochs, max(config.min_epochs, point["epochs"]))
        if config.init:
            point["start"] = "scratch"
    return points


def suggest(trial, config: TuneConfig, pretrained: dict | None) -> dict:
    """One recipe from the trial (define-by-run: a pretrained start fixes the architecture to the pretrained one)."""
    params: dict = {}
    for name, (low, high, step) in AUGMENTATION_GRID.items():
        if isinstance(step, int):
            params[name] = trial.suggest_int(name, low, high, step=step)
        else:
            params[name] = round(trial.suggest_float(name, low, high, step=step), 6)
    params["flip"] = trial.suggest_categorical("flip", (True, False))
    for name, choices in LOSS_WEIGHTS.items():
        params[name] = trial.suggest_categorical(name, choices)
    params["lr"] = trial.suggest_float("lr", *LR_RANGE, log=True)
    params["epochs"] = trial.suggest_int("epochs", config.min_epochs, config.max_epochs, step=2)
    start = trial.suggest_categorical("start", ("scratch", "pretrained")) if pretrained else "scratch"
    if start == "pretrained":
        params.update(pool_grid=pretrained["pool_grid"], width=pretrained["width"], init=config.init)
    else:
        params["pool_grid"] = trial.suggest_categorical("pool_grid", POOL_GRIDS)
        params["width"] = trial.suggest_categorical("width", WIDTHS)
    return params


def trial_config(config: TuneConfig, params: dict, pretrained: dict | None) -> TrainConfig:
    """The TrainConfig a trial trains: the defaults, the fixed fields, then the suggested recipe."""
    base = replace(TrainConfig(), image_size=config.image_size, device=config.device, **config.fixed)
    if params.get("init") and pretrained:
        base = replace(base, embedding_dim=pretrained["embedding_dim"])
    return replace(base, **{k: v for k, v in params.items() if k != "start"})


def pretrained_architecture(init: str, image_size: int) -> dict | None:
    """The architecture of a pretrained start (``--init``), checked against the search's image size."""
    if not init:
        return None
    from kinship.checkpoint import read_checkpoint

    model_config = read_checkpoint(Path(init)).get("model_config") or {}
    if model_config.get("arch") != "residual" or model_config.get("members", 1) != 1 or model_config.get("backbone"):
        raise UserError(f"--init {init}: only a single residual model (kinship pretrain's) can start the search")
    if model_config.get("image_size") != image_size:
        raise UserError(f"--init {init} is a {model_config.get('image_size')} px model; the search trains at "
                        f"{image_size} px (--image-size)")
    return model_config


# --- the study -----------------------------------------------------------------------------------------------


def default_storage(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def open_study(storage_url: str, study_name: str, config: TuneConfig, roles: FamilyRoles | None = None):
    """Create the study (and queue the starting points) or join it; every worker calls this."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(storage_url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate/group: "experimental"
        # multivariate TPE models the knobs jointly (augmentation strengths trade off); group handles the pretrained
        # start, whose trials suggest no width or pooling grid
        sampler = optuna.samplers.TPESampler(seed=config.seed, multivariate=True, group=True, n_startup_trials=6,
                                             constant_liar=True)
    # Successive halving on per-epoch validation AUC: rungs at 2, 6 and 18 epochs, a third promoted at each.
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler, pruner=pruner,
                                    direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        _check_same_search(study, config, roles)
        return study
    study.set_user_attr("tune_config", _jsonable(asdict(config)))
    if roles is not None:
        study.set_user_attr("roles_digest", _roles_digest(roles))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # enqueue_trial is marked experimental in some releases
        for name, point in zip(STARTING_NAMES, starting_points(config)):
            study.enqueue_trial(point, user_attrs={"starting_point": name}, skip_if_exists=True)
    return study


def _storage(url: str, attempts: int = 4):
    """Optuna's RDB storage with heartbeats. Workers that open a new database at the same moment race to create its
    tables (one loses with a duplicate-table error): the loser tries again, and then finds them."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: "experimental"
                beat = heartbeat_seconds()
                return RDBStorage(url, heartbeat_interval=beat, grace_period=3 * beat,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                                  engine_kwargs={"pool_pre_ping": True})
        except (optuna.exceptions.OptunaError, ImportError, ValueError) as error:
            raise UserError(f"cannot open the study storage {_safe_url(url)}: {first_line(error, 200)}") from error
        except Exception as error:  # SQLAlchemy's errors: the server's name in the message, never the password
            if attempt == attempts - 1:
                raise UserError(f"cannot open the study storage {_safe_url(url)}: {type(error).__name__}") from error
            log.warning("study storage %s: %s; trying again", _safe_url(url), type(error).__name__)
            time.sleep(1.0 + attempt)


def _safe_url(url: str) -> str:
    """The storage URL without a password."""
    head, _, tail = url.rpartition("@")
    if not head:
        return url
    scheme, _, credentials = head.partition("://")
    return f"{scheme}://{credentials.split(':')[0]}:***@{tail}"


def _check_same_search(study, config: TuneConfig, roles: FamilyRoles | None) -> None:
    """Joining a study with another data split would mix trials scored on other families."""
    recorded = study.user_attrs.get("roles_digest")
    if roles is not None and recorded and recorded != _roles_digest(roles):
        raise UserError(f"study {study.study_name!r} was searched on other families (another data set, --seed, "
                        "--holdout or --folds): choose another --study")


def _roles_digest(roles: FamilyRoles) -> str:
    return hashlib.sha256(json.dumps(roles.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


# --- running trials ------------------------------------------------------------------------------------------


class BudgetSpent(Exception):
    """The study's budget ran out during a trial: the trial stops there (recorded as pruned, reason 'budget')."""


def spent_seconds(study) -> float:
    """Time of the study's finished trials (every worker's) plus the running ones so far."""
    now, total = time.time(), 0.0
    for trial in study.get_trials(deepcopy=False):
        if trial.datetime_start is not None:  # a queued trial has not started
            end = trial.datetime_complete.timestamp() if trial.datetime_complete else now
            total += max(0.0, end - trial.datetime_start.timestamp())
    return total


def finished_trials(study) -> int:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(1 for trial in study.get_trials(deepcopy=False, states=done))


def budget_left(study, config: TuneConfig) -> bool:
    """Whether another trial may start: under the trial cap (counting other workers' running trials, so workers
    that start at the same moment overshoot it by at most one each) and under the time budget."""
    import optuna

    if config.trials:
        counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
        if len(study.get_trials(deepcopy=False, states=counted)) >= config.trials:
            return False
    return spent_seconds(study) < config.budget_minutes * 60


def run_trials(data_dir: Path, work_dir: Path, config: TuneConfig, study, roles: FamilyRoles,
               on_progress=silent, on_trial_done: Callable | None = None, cache_dir: Path | None = None) -> int:
    """Run trials of ``study`` in this process until the budget or the trial cap is reached; returns how many.

    The data is prepared once (the trial folds only: held-out images are never opened) and shared by every trial.
    ``on_trial_done(trial, run_dir)`` sees each finished trial and its folder (the stack stores its model)."""
    from kinship.data import prepare

    pretrained = pretrained_architecture(config.init, config.image_size)
    prepared = prepare(Path(data_dir), config.image_size, cache_dir=cache_dir, on_progress=on_progress,
                       families=roles.trial_split)
    ran = 0
    while budget_left(study, config):
        before = spent_seconds(study)
        objective = _objective(data_dir, work_dir, config, study, prepared, pretrained, before, on_progress,
                               on_trial_done)
        study.optimize(objective, n_trials=1, catch=(), gc_after_trial=True)
        ran += 1
        best = _best(study)
        on_progress(ProgressEvent("recipe search", min(int(spent_seconds(study)), int(config.budget_minutes * 60)),
                                  int(config.budget_minutes * 60),
                                  {"trials done": finished_trials(study), "best": round(best.value, 4) if best else "-"}))
    return ran


def _objective(data_dir, work_dir: Path, config: TuneConfig, study, prepared, pretrained, spent_before: float,
               on_progress, on_trial_done):
    import optuna

    from kinship.train import train

    budget = config.budget_minutes * 60

    def objective(trial) -> float:
        params = suggest(trial, config, pretrained)
        train_config = trial_config(config, params, pretrained)
        run_dir = Path(work_dir) / "trials" / f"{trial.number:04d}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a leftover of a killed process: this number is this trial's
        started = time.time()

        def on_epoch(record: dict) -> None:
            trial.report(record["val_auc"], record["epoch"])
            trial.set_user_attr("epochs_run", record["epoch"])
            if spent_before + time.time() - started >= budget and record["epoch"] < train_config.epochs:
                trial.set_user_attr("stopped", "budget")
                raise BudgetSpent()
            if trial.should_prune():
                trial.set_user_attr("stopped", "pruned")
                raise optuna.TrialPruned()

        best = _best(study)
        so_far = {"trials done": finished_trials(study), "best": round(best.value, 4) if best else "-"}

        def on_trial_progress(event: ProgressEvent) -> None:
            elapsed = spent_before + time.time() - started
            on_progress(ProgressEvent("recipe search", int(min(elapsed, budget)), int(budget),
                                      {**so_far, "trial": trial.number, "at": event.stage}))

        trial.set_user_attr("recipe", _jsonable(params))
        try:
            result = train(Path(data_dir), run_dir, train_config, prepared=prepared, on_epoch=on_epoch,
                           on_progress=on_trial_progress)
        except BudgetSpent:
            _after_trial(trial, run_dir, on_trial_done)
            raise optuna.TrialPruned()
        except optuna.TrialPruned:
            _after_trial(trial, run_dir, on_trial_done)
            raise
        trial.set_user_attr("pixel_auc", result.pixel_baseline_auc)
        trial.set_user_attr("best_epoch", result.best_epoch)
        _after_trial(trial, run_dir, on_trial_done)
        log.info("trial %d: validation AUC %.4f at epoch %d of %d (%.0f s)", trial.number, result.best_auc,
                 result.best_epoch, train_config.epochs, time.time() - started)
        return result.best_auc

    return objective


def _after_trial(trial, run_dir: Path, on_trial_done) -> None:
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # model.pt (best epoch) stays; resume state does not
    if on_trial_done is not None:
        on_trial_done(trial, run_dir)


def _best(study):
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


# --- the outcome ---------------------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """What the search found, the floor it was held to and the figure on families no trial touched."""

    recipe_path: Path | None
    recipe: dict | None
    best_trial: int | None
    val_auc: float  # the best trial's validation AUC (the scored fold)
    pixel_val_auc: float  # raw pixels on the same validation pairs
    held_out_auc: float  # the best trial's model on the held-out families
    pixel_held_out_auc: float  # raw pixels on the same held-out pairs
    defaults_held_out_auc: float | None  # the defaults' trial, when it ran to the end, on the same pairs
    defaults_val_auc: float | None
    trials: dict  # state -> count
    spent_minutes: float
    families: dict  # role -> count
    table_path: Path | None = None
    plots: list[Path] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict:
        values = asdict(self)
        values["recipe_path"] = str(self.recipe_path) if self.recipe_path else None
        values["table_path"] = str(self.table_path) if self.table_path else None
        values["plots"] = [str(p) for p in self.plots]
        return _jsonable(values)


def finish(data_dir: Path, work_dir: Path, config: TuneConfig, study, roles: FamilyRoles,
           model_of: Callable[[int], Path] | None = None, on_progress=silent) -> TuneResult:
    """Pick the best trial, hold it to the raw-pixel floor, score it on the held-out families and write
    ``recipe.json`` (only when it clears the floor), ``trials.csv`` and the plots into ``work_dir``.

    ``model_of(trial_number)`` gives a trial's ``model.pt`` (by default in ``work_dir/trials``; the stack fetches it
    from the store)."""
    import optuna

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a worker killed mid-trial: its trial is failed, not left running
    model_of = model_of or (lambda number: work_dir / "trials" / f"{number:04d}" / "model.pt")
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state != optuna.trial.TrialState.WAITING:
            states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    table_path = write_trial_table(study, work_dir)
    plots = write_plots(study, work_dir)
    families = {"held_out": len(roles.held_out), "tuning": sum(len(g) for g in roles.folds),
                "trial_train": len(roles.trial_split.train), "trial_validation": len(roles.trial_split.val),
                "folds": len(roles.folds)}
    best = _best(study)
    spent = spent_seconds(study) / 60
    nan = float("nan")
    if best is None:
        return TuneResult(None, None, None, nan, nan, nan, nan, None, None, states, spent, families, table_path, plots,
                          "no trial finished: raise --budget-minutes")
    pixel_val = float(best.user_attrs.get("pixel_auc", nan))
    defaults_trial = _defaults_trial(study)
    held = held_out_scores(data_dir, config, roles, [best.number] + ([defaults_trial.number] if defaults_trial else []),
                           model_of, on_progress)
    result = TuneResult(
        None, None, best.number, float(best.value), pixel_val, held["models"][best.number], held["pixels"],
        held["models"].get(defaults_trial.number) if defaults_trial else None,
        float(defaults_trial.value) if defaults_trial else None, states, spent, families, table_path, plots)
    if not best.value >= pixel_val + config.required_margin:
        (work_dir / "recipe.json").unlink(missing_ok=True)  # an earlier finish's recipe must not stand for this one
        result.message = (f"no recipe: the best trial ({best.number}) reached validation AUC {best.value:.4f}, raw-pixel "
                          f"cosine {pixel_val:.4f} on the same pairs: not {config.required_margin} above it")
        return result
    pretrained = pretrained_architecture(config.init, config.image_size)
    recipe_config = trial_config(config, dict(best.user_attrs["recipe"]), pretrained)
    recipe = {"format": RECIPE_FORMAT, "train": asdict(recipe_config),
              "search": {"study": study.study_name, "best_trial": best.number, "val_auc": best.value,
                         "pixel_val_auc": pixel_val, "held_out_auc": result.held_out_auc,
                         "pixel_held_out_auc": result.pixel_held_out_auc, "families": families,
                         "trials": states, "spent_minutes": round(spent, 2), "data": str(data_dir)}}
    result.recipe, result.recipe_path = recipe, work_dir / "recipe.json"
    write_atomic(result.recipe_path, json.dumps(recipe, indent=2))
    result.message = (f"recipe: trial {best.number}, validation AUC {best.value:.4f} (raw pixels {pixel_val:.4f}); "
                      f"held-out families {result.held_out_auc:.4f} (raw pixels {result.pixel_held_out_auc:.4f})")
    return result


def _defaults_trial(study):
    """The trial of the shipped defaults (the first starting point), if it ran to the end."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return next((t for t in complete if t.user_attrs.get("starting_point") == STARTING_NAMES[0]), None)


def held_out_scores(data_dir: Path, config: TuneConfig, roles: FamilyRoles, trial_numbers: list[int],
                    model_of: Callable[[int], Path], on_progress=silent) -> dict:
    """ROC AUC of each trial's model and of raw-pixel cosine on the same held-out pairs (the first time the
    held-out families are read)."""
    from kinship.baseline import pixel_baseline
    from kinship.checkpoint import load_model
    from kinship.data import prepare
    from kinship.metrics import roc_auc
    from kinship.train import choose_precision, score_pairs

    prepared = prepare(Path(data_dir), config.image_size, on_progress=on_progress, families=roles.held_out_split)
    precision = choose_precision(config.device, "off")
    scores = {}
    for number in dict.fromkeys(trial_numbers):
        model, _ = load_model(model_of(number))
        model = model.to(precision.device)
        scores[number] = roc_auc(prepared.val_pairs.label, score_pairs(model, prepared.pixels, prepared.val_pairs, precision))
    return {"models": scores, "pixels": pixel_baseline(prepared).auc, "pairs": len(prepared.val_pairs)}


TABLE_COLUMNS = ("trial", "state", "val_auc", "epochs_run", "seconds", "stopped")


def trial_rows(study) -> list[dict]:
    """One row per trial: state, validation AUC, epochs run, seconds and every suggested value."""
    import optuna

    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.WAITING:  # queued, never run (the budget ended first)
            continue
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else None
        value = trial.value if trial.value is not None else (
            max(trial.intermediate_values.values()) if trial.intermediate_values else None)
        rows.append({"trial": trial.number, "state": trial.state.name.lower(), "val_auc": value,
                     "epochs_run": trial.user_attrs.get("epochs_run"), "seconds": seconds,
                     "stopped": trial.user_attrs.get("stopped", ""),
                     **{k: round(v, 6) if isinstance(v, float) else v for k, v in trial.params.items()}})
    return rows


def write_trial_table(study, work_dir: Path) -> Path:
    rows = trial_rows(study)
    columns = list(TABLE_COLUMNS) + sorted({k for row in rows for k in row} - set(TABLE_COLUMNS))
    path = Path(work_dir) / "trials.csv"

    def write(handle) -> None:
        import io

        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        handle.write(text.getvalue().encode())

    write_atomic(path, write)
    return path


def write_plots(study, work_dir: Path) -> list[Path]:
    """Optuna's optimisation history and parameter importances as PNG (importances need two finished trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    drawers = [("history.png", optuna_plots.plot_optimization_history)]
    if len(complete) >= 2 and len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2:
        drawers.append(("importances.png", optuna_plots.plot_param_importances))
    for name, draw in drawers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as error:  # e.g. importances of parameters that never varied
                log.warning("plot %s not drawn: %s", name, error)
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        path = Path(work_dir) / name
        write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
        plt.close(figure)
        written.append(path)
    return written


def load_recipe(path: Path) -> TrainConfig:
    """The TrainConfig in a ``recipe.json`` written by ``kinship tune``; anything else is one line."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise UserError(f"recipe not found: {path}") from error
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not a recipe (unreadable JSON)") from error
    return recipe_from_document(document, str(path))


def recipe_from_document(document, where: str) -> TrainConfig:
    """The TrainConfig of a recipe document read from ``where`` (a file or a store URI), checked."""
    recorded = document.get("format") if isinstance(document, dict) else type(document).__name__
    if recorded != RECIPE_FORMAT or not isinstance(document.get("train"), dict):
        raise UserError(f"{where} is not a recipe (format {recorded!r}, expected {RECIPE_FORMAT!r})")
    unknown = sorted(set(document["train"]) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise UserError(f"{where}: unknown training fields {', '.join(unknown)}")
    try:
        return TrainConfig(**document["train"])
    except TypeError as error:
        raise UserError(f"{where}: {error}") from error


def tune(data_dir: Path, out: Path, config: TuneConfig, storage_url: str = "", study_name: str = "",
         on_progress=silent) -> TuneResult:
    """The whole search in this process: roles, study (created or joined), trials until the budget, the outcome."""
    config.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    roles = family_roles(related_families(data_dir), config)
    write_atomic(out / "families.json", json.dumps(roles.to_dict(), indent=2))
    pretrained_architecture(config.init, config.image_size)  # a bad --init fails before any trial
    study = open_study(storage_url or default_storage(out), study_name or "kinship-tune", config, roles)
    run_trials(data_dir, out, config, study, roles, on_progress)
    return finish(data_dir, out, config, study, roles, on_progress=on_progress)

