"""Export a checkpoint to ONNX, TorchScript or a torch.export program (verified against the eager model)."""

from .exporter import (ATOL, FORMATS, RTOL, ExportError, ExportReport, MissingExtraError, export, export_model,
                       read_export_record)

__all__ = ["ATOL", "FORMATS", "RTOL", "ExportError", "ExportReport", "MissingExtraError", "export", "export_model",
           "read_export_record"]
