"""Errors a user can cause. Each message is one line naming the field, the value and the rule."""


class RecsysError(Exception):
    """Base class for errors the CLI reports as a single line (no traceback)."""


class ConfigError(RecsysError):
    """An invalid configuration value."""

    def __init__(self, key: str, value, allowed: str):
        super().__init__(f"config: {key}={value!r} is invalid: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


class DataError(RecsysError):
    """Input data or an artifact that cannot be used."""


class RequestError(RecsysError):
    """A bad recommendation request (the engine and the HTTP service): the message names the field."""

    def __init__(self, field_name: str, message: str, status: int = 400):
        super().__init__(f"{field_name}: {message}")
        self.field, self.status = field_name, status
