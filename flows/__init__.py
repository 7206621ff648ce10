"""Prefect flows: the order of the tasks, nothing else.

- ``flows/train.py``   ``kinship-train``   (deployment ``kinship-train/train`` on the ``rocm`` pool)
- ``flows/engines.py`` ``kinship-engines`` (deployment ``kinship-engines/engines`` on the ``cuda`` pool)
- ``flows/full.py``    ``kinship``         (deployments ``kinship/full`` and ``kinship/retrain-nightly``
  on the ``orchestrator`` pool; runs the two above as nested sub-flows)
"""
