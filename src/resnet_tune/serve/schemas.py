"""The web service's response models and request-body description, for its OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ERRORS", "EXPLAIN_SUMMARY", "IMAGE_BODY", "PREDICT_RESPONSES", "ErrorDetail", "Health", "Prediction",
           "SegPrediction"]


class ClassProb(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class", description="class name")
    prob: float = Field(description="softmax probability")


class Prediction(BaseModel):
    file: str = Field(description="the upload's file name (multipart) or 'body' (raw body)")
    top: list[ClassProb]


class ClassShare(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class", description="class name")
    fraction: float = Field(description="share of the image's pixels predicted as this class")


class SegPrediction(BaseModel):
    file: str = Field(description="the upload's file name (multipart) or 'body' (raw body)")
    classes: list[ClassShare] = Field(description="classes present in the mask, largest share first")
    width: int
    height: int


#: The response schema of /predict per task (for the OpenAPI document) and its summary.
PREDICT_RESPONSES: dict[str, tuple[Any, str]] = {
    "classification": (list[Prediction], "top-k classes of one or several images"),
    "segmentation": (list[SegPrediction], "pixel share of each class in one or several images"),
}
EXPLAIN_SUMMARY = {"classification": "Grad-CAM overlay of one image (PNG)",
                    "segmentation": "segmentation mask over one image (PNG)"}


class Health(BaseModel):
    status: str
    model: str
    task: str
    classes: int
    auth: bool
    batching: bool


class ErrorDetail(BaseModel):
    detail: str


IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                     "description": "one or more images (repeat the field)"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}, "description": "one image as the raw body"},
    },
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "not an image, truncated, empty, or a malformed request"},
    401: {"model": ErrorDetail, "description": "missing or wrong bearer token (when the server has one)"},
    408: {"model": ErrorDetail, "description": "the body did not arrive within the server's request timeout"},
    413: {"model": ErrorDetail, "description": "upload over the byte limit, too many files, or an image over the "
                                              "pixel limit"},
    415: {"model": ErrorDetail, "description": "content type is neither multipart/form-data nor image/*"},
    429: {"model": ErrorDetail, "description": "the server has as many requests in progress as it admits",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}},
    503: {"model": ErrorDetail, "description": "the model stayed busy past the request timeout, or the server is "
                                              "shutting down",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}},
}
