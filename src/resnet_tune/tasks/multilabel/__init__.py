"""Multi-label image recognition: several labels an image, from a CSV (issue 15, in progress: the data and the
metrics land first; the task on the engine, its predictor and the CLI follow).
"""
