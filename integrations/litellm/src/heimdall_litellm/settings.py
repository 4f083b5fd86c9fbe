"""Settings, read from the environment of the LiteLLM proxy process."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w))+$")


class SettingsError(ValueError):
    """An environment variable has a value the integration cannot use."""


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


N = TypeVar("N", int, float)


def _bounded(env: Mapping[str, str], name: str, default: N, minimum: N, parse: Callable[[str], N]) -> N:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    what = "an integer" if parse is int else "a number"
    try:
        value = parse(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected {what}, got {raw!r}") from None
    if not value >= minimum or value == float("inf"):
        raise SettingsError(f"{name}: must be a finite number >= {minimum}, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """What the integration needs to know; see docs/integrations/litellm.md for each variable."""

    url: str = "http://127.0.0.1:8080"
    gateway_token: str | None = None
    timeout: float = 2.0
    fail_open: bool = False
    reserve: bool = True
    clamp_max_tokens: bool = False
    default_max_tokens: int = 1024
    hold_ttl: str | None = None
    auth_cache_ttl: float = 5.0
    batch_max: int = 500
    buffer_max: int = 100_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        url = env.get("HEIMDALL_URL", cls.url).strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"HEIMDALL_URL: expected an http:// or https:// URL, got {url!r}")
        hold_ttl = env.get("HEIMDALL_HOLD_TTL", "").strip() or None
        if hold_ttl is not None and not _DURATION.match(hold_ttl):
            raise SettingsError(f"HEIMDALL_HOLD_TTL: expected a duration like '5m', got {hold_ttl!r}")
        return cls(
            url=url,
            gateway_token=env.get("HEIMDALL_GATEWAY_TOKEN", "").strip() or None,
            timeout=_bounded(env, "HEIMDALL_TIMEOUT", cls.timeout, 0.001, float),
            fail_open=_flag(env, "HEIMDALL_FAIL_OPEN", cls.fail_open),
            reserve=_flag(env, "HEIMDALL_RESERVE", cls.reserve),
            clamp_max_tokens=_flag(env, "HEIMDALL_CLAMP_MAX_TOKENS", cls.clamp_max_tokens),
            default_max_tokens=_bounded(env, "HEIMDALL_DEFAULT_MAX_TOKENS", cls.default_max_tokens, 0, int),
            hold_ttl=hold_ttl,
            auth_cache_ttl=_bounded(env, "HEIMDALL_AUTH_CACHE_TTL", cls.auth_cache_ttl, 0.0, float),
            batch_max=_bounded(env, "HEIMDALL_BATCH_MAX", cls.batch_max, 1, int),
            buffer_max=_bounded(env, "HEIMDALL_BUFFER_MAX", cls.buffer_max, 1, int),
        )
