"""Finding the checkpoint a stopped training run resumes from."""

from __future__ import annotations

import glob
import os


def latest_checkpoint(ckpt_dir: str, pattern: str = "checkpoint_*.pt") -> str | None:
    """The most recently written file matching ``pattern`` in ``ckpt_dir``, or None when there is none.

    MONAI's ``CheckpointSaver`` names its epoch checkpoints ``checkpoint_epoch=N.pt`` and its final one
    ``checkpoint_final_iteration=N.pt`` (or a fixed ``final_filename``), so the newest match is where to resume.
    """
    files = [f for f in glob.glob(os.path.join(glob.escape(ckpt_dir), pattern)) if os.path.isfile(f)]
    return max(files, key=lambda f: (os.path.getmtime(f), f)) if files else None
