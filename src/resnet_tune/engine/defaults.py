"""Defaults chosen from the data (issue 12): what a run trains for when the user did not say.

Pure functions of what the trainer has counted, so that the choice can be tested on synthetic inputs, printed and
recorded in ``config.yaml`` (a resumed run keeps it)."""

from __future__ import annotations

import math

__all__ = ["MAX_EPOCHS_FACTOR", "MIN_SCRATCH_IMAGES", "scratch_epochs"]

#: a run from scratch without ``--epochs`` or ``--budget`` sees at least this many training images in all (about
#: 2,000 steps of 64): on small sets the usual 15 epochs stop far from convergence (benchmarks/RESULTS.md, "Session
#: of 2026-12-03 (sixth)": EuroSAT's 5,760 images gained about 5 held-out points from 10 to 20 epochs, 100 CIFAR-10
#: images a class about 3.5 from 30 to 60, paired by seed)
MIN_SCRATCH_IMAGES = 128_000
#: ... but at most this many times the task's usual epochs, so that a tiny set does not train for hundreds
MAX_EPOCHS_FACTOR = 4


def scratch_epochs(default: int, num_train: int) -> tuple[int, str | None]:
    """The epochs of a run from scratch on ``num_train`` training images when the user gave neither ``--epochs`` nor
    ``--budget``: ``default``, or enough epochs to see :data:`MIN_SCRATCH_IMAGES` images (at most
    :data:`MAX_EPOCHS_FACTOR` x ``default``), with the sentence that says why."""
    need = math.ceil(MIN_SCRATCH_IMAGES / max(num_train, 1))
    if need <= default:
        return default, None
    epochs = min(need, MAX_EPOCHS_FACTOR * default)
    return epochs, (f"{epochs} epochs, not the usual {default}: {num_train:,} training images from scratch need about "
                    f"{MIN_SCRATCH_IMAGES:,} images seen in all (at most {MAX_EPOCHS_FACTOR}x the usual epochs); "
                    "--epochs or --budget overrides")
