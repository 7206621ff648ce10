"""Training's objective: the pair loss (BCE on the pair head, in-batch kin InfoNCE, an identity classifier) and the
module DistributedDataParallel wraps so that every parameter the loss touches has its gradient averaged."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from kinship.pairs import PairSet

if TYPE_CHECKING:
    from kinship.train_config import TrainConfig


class PairObjective(torch.nn.Module):
    """The training loss; its identity classifier is used in training only and never exported.

    Three terms, all from one encoder pass over the batch:
    - BCE of the pair head on the sampled kin / non-kin pairs (what the model is used for);
    - InfoNCE over the batch's kin pairs: each partner is the one right answer among every other
      partner from another family (dozens of negatives per pass instead of one);
    - identity: a cosine-softmax classifier over the training people, as face recognisers are
      trained, so the encoder learns the heritable traits and ignores pose, light and background.
    """

    def __init__(self, embedding_dim: int, people: int, config: "TrainConfig"):
        super().__init__()
        self.config = config
        self.identity = torch.nn.Parameter(torch.randn(people, embedding_dim) * 0.01)

    def forward(self, model, img0, img1, batch: PairSet, family_of: np.ndarray, person_of: np.ndarray) -> torch.Tensor:
        size, device = img0.shape[0], img0.device
        embeddings = model.encoder(torch.cat((img0, img1), dim=0).contiguous(memory_format=torch.channels_last))
        emb0, emb1 = embeddings[:size], embeddings[size:]
        target = torch.as_tensor(batch.label, dtype=torch.float32, device=device)
        loss = F.binary_cross_entropy_with_logits(model.head(emb0, emb1).float(), target)
        if self.config.contrastive_weight > 0:
            loss = loss + self.config.contrastive_weight * self._kin_contrastive(emb0, emb1, batch, family_of)
        if self.config.identity_weight > 0:
            loss = loss + self.config.identity_weight * self._identity(embeddings, batch, person_of)
        return loss

    def _kin_contrastive(self, emb0, emb1, batch: PairSet, family_of: np.ndarray) -> torch.Tensor:
        kin = np.flatnonzero(batch.label == 1)
        if len(kin) < 2:
            return emb0.new_zeros(())
        a, b = F.normalize(emb0[kin].float(), dim=1), F.normalize(emb1[kin].float(), dim=1)
        similarity = a @ b.T / self.config.contrastive_temperature
        left, right = family_of[batch.left[kin]], family_of[batch.right[kin]]
        same_family = torch.as_tensor(left[:, None] == right[None, :], device=emb0.device)
        same_family.fill_diagonal_(False)
        similarity = similarity.masked_fill(same_family, float("-inf"))  # relatives are not negatives
        answer = torch.arange(len(kin), device=emb0.device)
        return (F.cross_entropy(similarity, answer) + F.cross_entropy(similarity.T, answer)) / 2

    def _identity(self, embeddings, batch: PairSet, person_of: np.ndarray) -> torch.Tensor:
        labels = torch.as_tensor(person_of[np.concatenate((batch.left, batch.right))], device=embeddings.device)
        known = labels >= 0
        cosine = F.normalize(embeddings[known].float(), dim=1) @ F.normalize(self.identity, dim=1).T
        return F.cross_entropy(cosine * self.config.identity_scale, labels[known])


class PairLoss(torch.nn.Module):
    """The model and its objective as one module whose forward is the loss: what DistributedDataParallel wraps, so
    that every parameter the loss touches (encoder, head, identity classifier) has its gradient averaged."""

    def __init__(self, model, objective: PairObjective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, img0, img1, batch: PairSet, family_of: np.ndarray, person_of: np.ndarray) -> torch.Tensor:
        return self.objective(self.model, img0, img1, batch, family_of, person_of)
