"""One rank of a data-parallel training, as torchrun starts it: ``python -m kinship.distributed_worker JOB``.

Apart from ``kinship.distributed`` (the rank helpers and the launcher, which ``kinship.train`` imports) so that the
two never import each other: this module imports the training, the training imports the launcher.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from kinship.distributed import current_rank
from kinship.train import train
from kinship.train_config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    """One rank: train as the JSON job ``kinship.distributed.launch`` wrote (data, run, config, resume, cache_dir)."""
    job = json.loads((argv if argv is not None else sys.argv[1:])[0])
    rank = current_rank()
    logging.basicConfig(level=logging.INFO if rank.is_main else logging.WARNING,
                        format=f"[rank {rank.rank}] %(message)s")
    config = TrainConfig.from_dict(job["config"])
    cache_dir = Path(job["cache_dir"]) if job.get("cache_dir") else None
    train(Path(job["data"]), Path(job["run"]), config, resume=bool(job["resume"]), cache_dir=cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
