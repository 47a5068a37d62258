"""The one training engine: configuration, the task interface, the trainer, optimisation, precision and
hardware, checkpoints with exact resume, torchrun/DDP, the frozen-backbone feature cache and the run folder."""
