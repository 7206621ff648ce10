"""The trained pair head over a whole gallery, in numpy: exact, and a fast path with the same top results.

``PairHead`` scores ``features = [(a-b)^2, a*b, a^2-b^2]`` with ``relu(W1 features + b1)`` then ``w2``. Split
``W1 = [Wa | Wb | Wc]`` over the three blocks; then for probe ``p`` and gallery image ``g``

    W1 features = (Wa+Wc) p^2  +  (Wa-Wc) g^2  +  (Wb-2Wa) (p*g)

so each hidden unit's pre-activation is a constant of the probe, a fixed term of the image and one dot product
``g . ((Wb-2Wa)_h * p)``: the exact head over N images costs one ``[N, D] x [D, H]`` product (plus the ReLU and
``w2``). On 2 cores that is about 8 GFLOP per probe for a million images at D=128, H=64: seconds, not 50 ms.

The fast path therefore shortlists with a linear surrogate and re-scores the shortlist exactly. Dropping the ReLU,
weighting each hidden unit by how often it is active for this probe (``activity``, measured on a sample of the
gallery), collapses the H units into one vector: ``surrogate(g) = g . v(p) + q(g)``, ``v(p) = sum_h a_h w2_h
(Wb-2Wa)_h * p`` and ``q(g) = g^2 . sum_h abar_h w2_h (Wa-Wc)_h`` cached per image. That is one matrix-vector
product over the gallery, optionally in a PCA basis of ``rank`` dimensions to halve the memory read.
``benchmarks/search.py`` measures every candidate (surrogate or cosine, rank, shortlist size, the exact head
over all) against exact brute force; ``FastConfig``'s defaults are its choice.

Fold ensembles (``EnsembleHead`` of ``PairHead``s) decompose the same way, member by member on its slice of the
embedding. The seed project's head (concatenated conv features) does not: it is scored exactly, in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

CHUNK = 65_536  # rows per block of exact scoring: [65536, 64] float32 pre-activations are 16 MiB


@dataclass(frozen=True)
class HeadMember:
    """One ``PairHead``'s weights, split by feature block, and the slice of the embedding it reads."""

    a: np.ndarray  # (Wa + Wc): on the probe's squares            [H, D]
    b: np.ndarray  # (Wa - Wc): on the gallery image's squares     [H, D]
    c: np.ndarray  # (Wb - 2 Wa): on the product                  [H, D]
    b1: np.ndarray  # [H]
    w2: np.ndarray  # [H]
    b2: float
    start: int

    @classmethod
    def from_linear(cls, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: float, start: int = 0) -> "HeadMember":
        """From the first Linear's ``[H, 3D]`` weight and the second's ``[H]`` (as ``PairHead.mlp`` holds them)."""
        w1 = np.asarray(w1, dtype=np.float64)
        width = w1.shape[1] // 3
        wa, wb, wc = w1[:, :width], w1[:, width : 2 * width], w1[:, 2 * width :]
        cast = lambda x: np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
        return cls(cast(wa + wc), cast(wa - wc), cast(wb - 2 * wa), cast(b1), cast(np.ravel(w2)), float(b2), start)

    @property
    def width(self) -> int:
        return self.a.shape[1]

    def pre_activation(self, probe: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """``[N, H]`` first-layer outputs for one probe embedding (its slice) against ``gallery`` rows (slices)."""
        p = probe[self.start : self.start + self.width]
        g = gallery[:, self.start : self.start + self.width]
        constant = self.a @ (p * p) + self.b1
        return (g * g) @ self.b.T + g @ (self.c * p).T + constant


@dataclass(frozen=True)
class HeadWeights:
    """A pair head as numpy weights: one member, or a fold ensemble's members (the logit is their mean)."""

    members: tuple[HeadMember, ...]

    @property
    def dim(self) -> int:
        last = self.members[-1]
        return last.start + last.width

    def logits(self, probe: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """Exact head logits ``head(probe, g)`` for every row ``g`` of ``gallery``, in blocks of ``CHUNK`` rows."""
        probe = np.asarray(probe, dtype=np.float32)
        out = np.empty(len(gallery), dtype=np.float32)
        for start in range(0, len(gallery), CHUNK):
            block = np.asarray(gallery[start : start + CHUNK], dtype=np.float32)
            total = np.zeros(len(block), dtype=np.float32)
            for member in self.members:
                total += np.maximum(member.pre_activation(probe, block), 0) @ member.w2 + member.b2
            out[start : start + CHUNK] = total / len(self.members)
        return out

    def pair_logits(self, emb0: np.ndarray, emb1: np.ndarray) -> np.ndarray:
        """``head(emb0[i], emb1[i])`` row by row (to check these weights against the model's own head)."""
        return np.asarray([self.logits(a, b[None])[0] for a, b in zip(emb0, emb1)])


def head_weights_of_state(state: dict) -> HeadWeights | None:
    """``HeadWeights`` from a head's weights by name (numpy arrays, as ``state_dict`` or an ONNX export's
    initializers name them, with or without the ``head.`` prefix): a ``PairHead`` (``mlp.0``, ``mlp.3``) or a fold
    ensemble of them (``members.K.mlp...``, each member on the next slice of the embedding); None for any other
    head (the seed head has ``mlp.0`` over two concatenated embeddings and ``mlp.2``: its width is not 3 x D)."""
    state = {key.removeprefix("head."): np.asarray(value) for key, value in state.items()}
    if "mlp.0.weight" in state and "mlp.3.weight" in state and "mlp.2.weight" not in state:
        w1 = state["mlp.0.weight"]
        if w1.ndim != 2 or w1.shape[1] % 3:
            return None
        return HeadWeights((HeadMember.from_linear(w1, state["mlp.0.bias"], state["mlp.3.weight"],
                                                   float(np.ravel(state["mlp.3.bias"])[0])),))
    count = len({key.split(".")[1] for key in state if key.startswith("members.")})
    members, start = [], 0
    for index in range(count):
        prefix = f"members.{index}."
        single = head_weights_of_state({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
        if single is None:
            return None
        members.append(HeadMember(**{**single.members[0].__dict__, "start": start}))
        start += single.members[0].width
    return HeadWeights(tuple(members)) if members else None


def head_weights_of_model(path: Path) -> HeadWeights | None:
    """The numpy head of a model file, unchecked: a ``.pt`` checkpoint's head, or the initializers of an exported
    ``X.head.onnx`` beside ``X.onnx``; None when the head is not a (fold ensemble of) ``PairHead``."""
    path = Path(path)
    if path.suffix == ".pt":
        from kinship.checkpoint import load_model

        model, _ = load_model(path)
        return head_weights_of_state({k: v.detach().cpu().numpy() for k, v in model.head.state_dict().items()})
    if path.suffix == ".onnx":
        from onnx import numpy_helper

        from kinship.export import companion_paths
        from kinship.model_facts import load_onnx

        graph = load_onnx(companion_paths(path).head).graph
        return head_weights_of_state({t.name: numpy_helper.to_array(t) for t in graph.initializer})
    return None


def checked(weights: HeadWeights | None, head: Callable[[np.ndarray, np.ndarray], np.ndarray], dim: int,
            tolerance: float = 1e-4, seed: int = 0) -> HeadWeights | None:
    """``weights`` if they reproduce the model's own ``head`` on random unit embeddings within ``tolerance`` (in
    the logit, absolute), else None: a decomposition that does not match is never used."""
    if weights is None or weights.dim != dim:
        return None
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((2, 64, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    expected = np.asarray(head(emb[0], emb[1]), dtype=np.float64).ravel()
    return weights if np.max(np.abs(weights.pair_logits(emb[0], emb[1]) - expected)) <= tolerance else None


@dataclass(frozen=True)
class FastConfig:
    """The fast path: shortlist by ``stage`` ('surrogate' or 'cosine') in a ``rank``-dimensional PCA basis (0: the
    full embedding), then the exact head on the best ``shortlist`` images."""

    stage: str = "surrogate"
    # benchmarks/search.py at 1M images: PCA 32 holds recall@50 >= 0.99 from a shortlist of 100 on a trained model;
    # 1000 keeps a margin for weaker ones (the tiny test model needs it) at a few ms more
    rank: int = 32
    shortlist: int = 1000
    activity_sample: int = 2048  # gallery rows on which each hidden unit's activity for a probe is measured


class GalleryScorer:
    """A gallery's embeddings with what the fast path caches: the per-image surrogate term, the PCA projection."""

    def __init__(self, embeddings: np.ndarray, weights: HeadWeights, config: FastConfig = FastConfig(), seed: int = 0):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.weights = weights
        self.config = config
        rng = np.random.default_rng(seed)
        sample_rows = np.sort(rng.choice(len(self.embeddings), min(config.activity_sample, len(self.embeddings)),
                                         replace=False))
        self.sample = self.embeddings[sample_rows]
        # the probe-independent part of the sample's pre-activations, so a probe's activity costs one product
        self.sample_terms = [(self.sample[:, m.start : m.start + m.width] ** 2) @ m.b.T + m.b1
                             for m in weights.members]
        self.mean_activity = self._mean_activity(rng)
        self.image_term = self._image_term()
        self.basis, self.projected = self._projection() if config.rank else (None, None)

    def _mean_activity(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Per member, how often each hidden unit is active over sample probe x sample image pairs."""
        probes = self.sample[rng.choice(len(self.sample), min(64, len(self.sample)), replace=False)]
        return [np.mean([member.pre_activation(p, self.sample) > 0 for p in probes], axis=(0, 1))
                for member in self.weights.members]

    def _image_term(self) -> np.ndarray:
        """``q(g)``: the surrogate's per-image term, on the squared embedding, computed once per gallery."""
        u = np.zeros(self.weights.dim, dtype=np.float32)
        for member, activity in zip(self.weights.members, self.mean_activity):
            u[member.start : member.start + member.width] = (activity * member.w2) @ member.b
        out = np.empty(len(self.embeddings), dtype=np.float32)
        for start in range(0, len(self.embeddings), CHUNK):
            block = self.embeddings[start : start + CHUNK]
            out[start : start + CHUNK] = (block * block) @ u
        return out / len(self.weights.members)

    def _projection(self) -> tuple[np.ndarray, np.ndarray]:
        """The top ``rank`` principal directions of the sample and the gallery in that basis (float32)."""
        centred = self.sample - self.sample.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        basis = np.ascontiguousarray(vt[: self.config.rank].T, dtype=np.float32)
        projected = np.empty((len(self.embeddings), basis.shape[1]), dtype=np.float32)
        for start in range(0, len(self.embeddings), CHUNK):
            projected[start : start + CHUNK] = self.embeddings[start : start + CHUNK] @ basis
        return basis, projected

    def probe_vector(self, probe: np.ndarray) -> np.ndarray:
        """``v(p)``: the surrogate's probe vector, each hidden unit weighted by its activity for this probe."""
        v = np.zeros(self.weights.dim, dtype=np.float32)
        for member, term in zip(self.weights.members, self.sample_terms):
            p = probe[member.start : member.start + member.width]
            sample = self.sample[:, member.start : member.start + member.width]
            activity = np.mean(sample @ (member.c * p).T + (member.a @ (p * p) + term) > 0, axis=0)
            v[member.start : member.start + member.width] = ((activity * member.w2) @ member.c) * p
        return v / len(self.weights.members)

    def first_stage(self, probe: np.ndarray) -> np.ndarray:
        """The cheap score of every gallery image for one probe embedding."""
        probe = np.asarray(probe, dtype=np.float32)
        vector = probe if self.config.stage == "cosine" else self.probe_vector(probe)
        if self.basis is not None:
            dots = self.projected @ (vector @ self.basis)  # the mean's share is one constant: no effect on order
        else:
            dots = self.embeddings @ vector
        return dots if self.config.stage == "cosine" else dots + self.image_term

    def exact(self, probe: np.ndarray) -> np.ndarray:
        """Exact head logits of every gallery image for one probe embedding (the brute force)."""
        return self.weights.logits(probe, self.embeddings)

    def search(self, probe: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``top`` gallery rows by exact head logit among the fast path's shortlist, best first, and their logits."""
        first = self.first_stage(probe)
        size = min(max(self.config.shortlist, top), len(first))
        shortlist = np.argpartition(-first, size - 1)[:size] if size < len(first) else np.arange(len(first))
        logits = self.weights.logits(probe, self.embeddings[shortlist])
        return best(shortlist, logits, top)


def best(rows: np.ndarray, scores: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` rows by score, best first (ties by row number, so repeatable)."""
    order = np.lexsort((rows, -scores))[:top]
    return rows[order], scores[order]
