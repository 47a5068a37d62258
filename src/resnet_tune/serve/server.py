"""Running the web service: the serving extra checked once, and uvicorn started with stated limits."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["UVICORN_LIMITS", "require_serving_extra", "run_server"]

# uvicorn's own limits, stated so that they hold whatever its defaults become: an idle keep-alive connection closes
# after 5 s; request headers over 16 KiB get a 400 (h11, the HTTP parser used unless httptools is installed).
# limit_concurrency stays unset: past it uvicorn answers a plain-text 503 without Retry-After, while the app's own
# admission (--max-queue) answers JSON.
UVICORN_LIMITS = {"timeout_keep_alive": 5, "h11_max_incomplete_event_size": 16 * 1024}


def require_serving_extra() -> None:
    """Raise one sentence when fastapi, uvicorn or python-multipart is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        try:
            import python_multipart  # noqa: F401
        except ImportError:  # python-multipart < 0.0.13
            import multipart  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"serving needs fastapi, uvicorn and python-multipart ({err.name} is not installed); "
                          "install them with pip install 'resnet-tune[serve]'.") from None


def run_server(app: Any, *, host: str, port: int, log_level: str = "info", access_log: bool = False) -> None:
    """Serve ``app`` until interrupted (Ctrl-C or SIGTERM ends it gracefully within 5 seconds)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, server_header=False,
                timeout_graceful_shutdown=5, **UVICORN_LIMITS)
