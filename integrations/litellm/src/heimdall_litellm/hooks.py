"""What LiteLLM's `config.yaml` names: the `custom_auth` function and the callback instance.

    general_settings:
      custom_auth: heimdall_litellm.hooks.auth
    litellm_settings:
      callbacks: heimdall_litellm.hooks.handler
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import UserAPIKeyAuth

from .governor import Governor
from .settings import Settings

log = logging.getLogger("heimdall_litellm")

def _start() -> Governor:
    """The process's governor, made from the environment when LiteLLM loads this module (from
    `config.yaml`), so that a bad setting stops the proxy at start, naming the variable."""
    settings = Settings.from_env()
    log.info(
        "heimdall: governing this proxy with %s (reserve=%s, fail_open=%s, clamp_max_tokens=%s)",
        settings.url,
        settings.reserve,
        settings.fail_open,
        settings.clamp_max_tokens,
    )
    if settings.fail_open:
        log.warning("HEIMDALL FAIL-OPEN is on: while Heimdall is unreachable, requests go out ungoverned")
    return Governor(settings)


_governor = _start()


def governor() -> Governor:
    return _governor


async def auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """LiteLLM's `custom_auth`: the bearer token is a Heimdall virtual key."""
    result: UserAPIKeyAuth = await governor().authenticate(request.headers, api_key)
    return result


class HeimdallHandler(CustomLogger):
    """LiteLLM's callback: check and hold before the call, usage after it.

    LiteLLM calls `async_pre_call_hook` only on classes that define it themselves, so every
    hook is defined here, not inherited."""

    async def async_pre_call_hook(
        self, user_api_key_dict: UserAPIKeyAuth, cache: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any]:
        return await governor().before_call(user_api_key_dict, data, str(call_type))

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            governor().succeeded(kwargs)
        except Exception:  # a logging hook must never fail the proxy
            log.exception("heimdall: could not report a successful call")

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            governor().failed(kwargs)
        except Exception:
            log.exception("heimdall: could not report a failed call")


handler = HeimdallHandler()
