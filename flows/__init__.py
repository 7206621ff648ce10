"""Prefect flows: which tasks run, on which pool, nothing else.

The order of a half's steps is ``kinship.stage_order``'s, the one list the in-process ``kinship pipeline``
follows too: ``train.py`` and ``engines.py`` hand it their tasks (``tasks.training.TrainingTasks``,
``tasks.engines.EngineTasks``), so a flow names its steps' tasks rather than listing the calls.
``full.py`` lists its five task calls itself.

- ``flows/train.py``   ``kinship-train``   (deployment ``kinship-train/train`` on the ``rocm`` pool)
- ``flows/engines.py`` ``kinship-engines`` (deployment ``kinship-engines/engines`` on the ``cuda`` pool)
- ``flows/full.py``    ``kinship``         (deployments ``kinship/full`` and ``kinship/retrain-nightly``
  on the ``orchestrator`` pool; runs the two above as nested sub-flows)
"""
