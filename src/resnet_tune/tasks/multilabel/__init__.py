"""Multi-label image recognition: several labels an image from a CSV, a sigmoid head with binary cross-entropy,
macro mAP for the best checkpoint, per-label thresholds tuned on validation (``rt.fit(task="multilabel", ...)``).
"""
