"""Errors that know how the API must report them.

Every failure a client can see is raised low (engine, model manager, settings) as one of these
classes and rendered once, at the server's edge, in the Anthropic or OpenAI error shape. Carrying
the wire type and HTTP status on the class keeps that mapping in one place instead of scattering
status codes through the handlers.
"""

from __future__ import annotations


class PensieveError(Exception):
    """Base class: an error with an API error type, an HTTP status and a next step for the user."""

    error_type: str = "api_error"
    status: int = 500

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class InvalidRequestError(PensieveError):
    error_type = "invalid_request_error"
    status = 400


class AuthenticationError(PensieveError):
    error_type = "authentication_error"
    status = 401


class PermissionDeniedError(PensieveError):
    error_type = "permission_error"
    status = 403


class NotFoundError(PensieveError):
    error_type = "not_found_error"
    status = 404


class RequestTooLargeError(PensieveError):
    error_type = "request_too_large"
    status = 413


class RateLimitError(PensieveError):
    error_type = "rate_limit_error"
    status = 429


class ApiError(PensieveError):
    error_type = "api_error"
    status = 500


class OverloadedError(PensieveError):
    error_type = "overloaded_error"
    status = 529


class PromptTooLongError(InvalidRequestError):
    """The rendered prompt does not fit the model's context window.

    The message wording is the one Claude Code parses to offer compaction, so keep it exact.
    """

    def __init__(self, prompt_tokens: int, maximum: int) -> None:
        super().__init__(f"prompt is too long: {prompt_tokens} tokens > {maximum} maximum")
        self.prompt_tokens = prompt_tokens
        self.maximum = maximum


class ModelLoadError(PensieveError):
    """A model could not be found, read or fitted into memory; the message says what to do."""

    error_type = "api_error"
    status = 500


class ConfigError(PensieveError):
    """A settings value is invalid; the message names the key and where it came from."""

    error_type = "invalid_request_error"
    status = 400
