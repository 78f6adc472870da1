"""Every setting of the service, read from the environment once per container.

A bad value stops the container at start-up with a sentence naming the variable, rather
than surfacing later as a confusing failure in the middle of a login.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Mapping


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and says what is expected."""


@dataclass(frozen=True)
class Settings:
    token_ttl: int
    max_session_ttl: int
    review_interval: int
    key_secret_id: str | None
    key_file: str | None
    key_cache_ttl: int
    key_cache_grace: int
    clusters_file: str | None
    cors_allowed_origins: tuple[str, ...]
    csrf_enforce: bool
    log_level: str
    cluster_timeout: float
    cluster_breaker_failures: int
    cluster_breaker_cooldown: int
    cluster_max_in_flight: int
    app_dir: str


def _whole_number(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None, unit: str) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number{unit}, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must not be negative, got {value}" if minimum == 0
                            else f"{name} must be between {minimum} and {maximum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: int) -> int:
    return _whole_number(env, name, default, 0, None, " of seconds")


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    return _whole_number(env, name, default, 1, 1000, "")


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 < value <= 60:
        raise SettingsError(f"{name} must be between 0 and 60 seconds, got {raw}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    origins = tuple(o.strip() for o in env.get(name, "").split(",") if o.strip())
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if origin == "*" or not sep or scheme not in ("http", "https") or not rest or "/" in rest:
            raise SettingsError(
                f"{name} takes exact origins such as https://dashboard.example.com "
                f"(scheme and host, no path, no wildcard), got {origin!r}"
            )
    return origins


def _optional(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


def load(env: Mapping[str, str], app_dir: str) -> Settings:
    log_level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {log_level!r}")
    return Settings(
        token_ttl=_seconds(env, "TOKEN_TTL", 900),
        max_session_ttl=_seconds(env, "MAX_SESSION_TTL", 43200),
        review_interval=_seconds(env, "REVIEW_INTERVAL", 60),
        key_secret_id=_optional(env, "KEY_SECRET_ID"),
        key_file=_optional(env, "KEY_FILE"),
        key_cache_ttl=_seconds(env, "KEY_CACHE_TTL", 300),
        key_cache_grace=_seconds(env, "KEY_CACHE_GRACE", 3600),
        clusters_file=_optional(env, "CLUSTERS_FILE"),
        cors_allowed_origins=_origins(env, "CORS_ALLOWED_ORIGINS"),
        csrf_enforce=_flag(env, "CSRF_ENFORCE", True),
        log_level=log_level,
        cluster_timeout=_positive_float(env, "CLUSTER_TIMEOUT", 5.0),
        cluster_breaker_failures=_count(env, "CLUSTER_BREAKER_FAILURES", 5),
        cluster_breaker_cooldown=_seconds(env, "CLUSTER_BREAKER_COOLDOWN", 30),
        cluster_max_in_flight=_count(env, "CLUSTER_MAX_IN_FLIGHT", 10),
        app_dir=app_dir,
    )


APP_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=1)
def current() -> Settings:
    """The container's settings, parsed on first use."""
    return load(os.environ, APP_DIR)


def resolve_path(settings: Settings, path: str) -> str:
    """Relative paths in settings are taken from the app's directory, as Lambda has no useful cwd."""
    return path if os.path.isabs(path) else os.path.join(settings.app_dir, path)
