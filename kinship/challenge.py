"""Champion and challenger scored on the same held-out pairs, at promotion time.

The held-out families are the store's (``kinship.family_split``: a keyed hash of each family id, so the same
families in every data set version and never read by any training, early stopping or calibration). Their pairs
are drawn as validation pairs are (``kinship.pairs.validation_pairs``, fixed by the seed), both exported models
score them in ONNX Runtime (the FP32 reference every engine is checked against), and raw-pixel cosine scores
them as the floor. ``kinship.champion_compare.decide`` turns the three score arrays into the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kinship.baseline import REQUIRED_MARGIN
from kinship.champion import promote_if_better, promote_if_paired_better, read_champion
from kinship.champion_compare import DEFAULT_LEVEL, PairedScores, decide
from kinship.errors import UserError
from kinship.family_split import StableSplit
from kinship.manifests import EnginesManifest, TrainManifest
from kinship.model_facts import read_model_facts
from kinship.pairs import FamilySplit
from kinship.engine_stages import built_engines
from kinship.progress import Progress, silent
from kinship.storage import ArtifactRef, ArtifactStore

PAIRS_PER_RELATIONSHIP = 4  # per relationship row of a held-out family: about 2,800 pairs on 27 held-out families
PAIR_SEED = 0


@dataclass(frozen=True)
class HeldOutScores:
    """Both models' and raw pixels' scores on the held-out pairs, with what they were drawn from."""

    scores: PairedScores
    families: tuple[str, ...]
    pairs: int


def _prepared(data_dir: Path, image_size: int, held_out: tuple[str, ...], on_progress: Progress):
    from kinship.data import SplitConfig, prepare

    config = SplitConfig(seed=PAIR_SEED, val_pairs_per_relationship=PAIRS_PER_RELATIONSHIP)
    return prepare(data_dir, image_size, config, on_progress=on_progress, families=FamilySplit(train=(), val=held_out))


def _model_scores(onnx: Path, prepared) -> np.ndarray:
    from kinship.engines.validate import engine_logits, reference_engine, validation_data

    return engine_logits(reference_engine(onnx), validation_data(prepared))


def held_out_families(data_dir: Path, split: StableSplit) -> tuple[str, ...]:
    """The held-out families of the data set in ``data_dir`` under the store's split."""
    from kinship.layout import read_dataset

    dataset = read_dataset(Path(data_dir), verify_images=False)
    return split.held_out({person.family for person in dataset.people.values()})


def score_held_out(data_dir: Path, split: StableSplit, challenger_onnx: Path, champion_onnx: Path,
                   on_progress: Progress = silent) -> HeldOutScores:
    """Score the held-out pairs of ``data_dir`` with both models and raw pixels, pair for pair.

    Each model reads the images at its own size (a champion trained at another size is still compared on the same
    pairs: the pairs depend on the data set and the seed, not on the size). Too few held-out families for pairs
    of both kinds is one ``UserError``."""
    from kinship.baseline import pixel_cosine

    families = held_out_families(data_dir, split)
    if len(families) < 2:
        raise UserError(f"{data_dir}: {len(families)} held-out families under the store's split: too few to compare "
                        "two models (the data set needs more families)")
    sizes = {path: read_model_facts(path).image_size for path in (challenger_onnx, champion_onnx)}
    prepared = {size: _prepared(Path(data_dir), size, families, on_progress) for size in set(sizes.values())}
    first = prepared[sizes[challenger_onnx]]
    pairs = first.val_pairs
    for other in prepared.values():  # the same pairs at every size, or the comparison would not be paired
        if not (np.array_equal(other.val_pairs.left, pairs.left) and np.array_equal(other.val_pairs.right, pairs.right)):
            raise UserError(f"{data_dir}: the held-out pairs differ between image sizes {sorted(prepared)} "
                            "(unreadable images at one size): cannot compare the two models")
    challenger = _model_scores(challenger_onnx, prepared[sizes[challenger_onnx]])
    champion = _model_scores(champion_onnx, prepared[sizes[champion_onnx]])
    pixels = pixel_cosine(first.pixels, pairs.left, pairs.right)
    family = [first.table.person_of[i].split("/")[0] for i in pairs.left]
    scores = PairedScores.from_lists(family, pairs.label, pairs.kind, champion, challenger, pixels)
    return HeldOutScores(scores, families, len(pairs))


def promote_on_held_out(store: ArtifactStore, train_manifest: TrainManifest, engines_manifest: EnginesManifest,
                        dataset_dir: Callable[[], Path], split_salt: str, work_dir: Path, level: float = DEFAULT_LEVEL,
                        required_margin: float = REQUIRED_MARGIN, on_progress: Progress = silent) -> dict:
    """Promote the run only if it beats the champion on the same held-out pairs (``kinship.champion``'s outcome
    dict, plus ``held_out``: the families and pairs scored).

    - A run trained on the seeded split (``split_salt`` empty) has no held-out families: the rule before data
      versions applies (``promote_if_better``: its own validation AUC against the champion's).
    - No champion yet, or a run with no built engine: nothing to compare with (``promote_if_paired_better`` with
      no decision: the run needs only to beat raw pixels by ``required_margin`` on its own pairs).
    - Otherwise both exported models (the champion's fetched by its pointer, every byte verified) and raw pixels
      score the held-out pairs of the data set folder ``dataset_dir()`` returns (called only here: the other cases
      never fetch the data set), and ``kinship.champion_compare.decide`` decides (paired
      bootstrap over families at ``level``)."""
    if not split_salt:
        return promote_if_better(store, train_manifest, engines_manifest, required_margin=required_margin)
    champion = read_champion(store)
    if champion is None or not built_engines(engines_manifest):
        return promote_if_paired_better(store, train_manifest, engines_manifest, None,
                                        champion.get("run_id") if champion else None, required_margin)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    challenger = store.get_file(ArtifactRef.from_dict(train_manifest["artifacts"]["model.onnx"]), work_dir / "challenger.onnx")
    defending = store.get_file(ArtifactRef.from_dict(champion["model"]), work_dir / "champion.onnx")
    from kinship.dataset_cache import hold

    folder = Path(dataset_dir())
    with hold(folder):  # this host's cached copy stays while it is read, as training holds it
        held = score_held_out(folder, StableSplit(split_salt), challenger, defending, on_progress)
    decision = decide(held.scores, level, required_margin)
    outcome = promote_if_paired_better(store, train_manifest, engines_manifest, decision, champion.get("run_id"),
                                       required_margin)
    return {**outcome, "held_out": {"families": len(held.families), "pairs": held.pairs,
                                    "champion_run_id": champion.get("run_id")}}
