"""Tasks: what differs between image classification and semantic segmentation (data, head, loss, metrics,
record, report, predictor), each on the one engine (:mod:`resnet_tune.engine`)."""
