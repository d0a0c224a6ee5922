"""Settings, logging, errors and paths shared by every Pensieve package."""

from pensieve.utils.errors import (
    ApiError,
    AuthenticationError,
    ConfigError,
    InvalidRequestError,
    ModelLoadError,
    NotFoundError,
    OverloadedError,
    PensieveError,
    PermissionDeniedError,
    PromptTooLongError,
    RateLimitError,
    RequestTooLargeError,
)
from pensieve.utils.settings import EMBEDDED_MODEL, Settings, load_settings

__all__ = [
    "EMBEDDED_MODEL",
    "ApiError",
    "AuthenticationError",
    "ConfigError",
    "InvalidRequestError",
    "ModelLoadError",
    "NotFoundError",
    "OverloadedError",
    "PensieveError",
    "PermissionDeniedError",
    "PromptTooLongError",
    "RateLimitError",
    "RequestTooLargeError",
    "Settings",
    "load_settings",
]
