"""What a request may cost, known before it is sent: its provider, its prices and its
prompt's size. Everything here reads LiteLLM's own knowledge (the router's deployments and
the model cost map) and falls back to something safe when LiteLLM does not know."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger("heimdall_litellm")


@dataclass(frozen=True)
class Route:
    """Where a model name of the proxy goes: the provider and model of its (first)
    deployment, and that deployment's prices in USD per token, when known."""

    provider: str
    upstream: str
    input_price: float | None = None
    output_price: float | None = None


def _price(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def _deployments(model: str) -> list[Any]:
    try:
        from litellm.proxy import proxy_server

        router = proxy_server.llm_router
        if router is None:
            return []
        return list(router.get_model_list(model_name=model) or [])
    except Exception:  # the proxy is not running (tests, scripts): no deployments
        return []


def route(model: str) -> Route:
    """Resolves a model name of the proxy (a model group) to its provider and prices."""
    deployments = _deployments(model)
    params: Mapping[str, Any] = deployments[0].get("litellm_params") or {} if deployments else {}
    info: Mapping[str, Any] = deployments[0].get("model_info") or {} if deployments else {}
    target = str(params.get("model") or model)
    try:
        import litellm

        upstream, provider, _, _ = litellm.get_llm_provider(
            model=target, custom_llm_provider=params.get("custom_llm_provider")
        )
        cost_map: Mapping[str, Any] = litellm.model_cost
    except Exception:
        upstream, provider, cost_map = target, "", {}
    known = cost_map.get(target) or cost_map.get(upstream) or cost_map.get(f"{provider}/{upstream}") or {}
    return Route(
        provider=str(provider or ""),
        upstream=str(upstream),
        input_price=_first_price("input_cost_per_token", params, info, known),
        output_price=_first_price("output_cost_per_token", params, info, known),
    )


def _first_price(name: str, *sources: Mapping[str, Any]) -> float | None:
    for source in sources:
        price = _price(source.get(name))
        if price is not None:
            return price
    return None


def prompt_tokens(upstream: str, data: Mapping[str, Any]) -> int:
    """The prompt's size in tokens, counted with LiteLLM's tokenizer for the model; a
    conservative guess (a token per four characters of its JSON) when it cannot count."""
    content: Any = data.get("messages")
    if content is None:
        content = data.get("input", data.get("prompt"))
    if content is None:
        return 0
    try:
        import litellm

        if isinstance(content, list) and all(isinstance(m, dict) and "role" in m for m in content):
            return int(litellm.token_counter(model=upstream, messages=content))
        if isinstance(content, str) or (isinstance(content, list) and all(isinstance(t, str) for t in content)):
            return int(litellm.token_counter(model=upstream, text=content))
    except Exception as e:
        log.debug("heimdall: token count for %s failed (%s); estimating from length", upstream, e)
    return len(json.dumps(content, default=str)) // 4 + 1


_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def requested_output(data: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The output limit a request sets: (its field, its value), or (None, None)."""
    for name in _OUTPUT_FIELDS:
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return name, value
    return None, None


@dataclass(frozen=True)
class Estimate:
    """The most a request can use: its prompt plus its output limit, priced at its route."""

    route: Route
    prompt: int
    output: int

    @property
    def tokens(self) -> int:
        return self.prompt + self.output

    @property
    def cost(self) -> float:
        return self.prompt * (self.route.input_price or 0.0) + self.output * (self.route.output_price or 0.0)

    def reserve(self) -> dict[str, Any]:
        return {"cost": round(self.cost, 9), "tokens": self.tokens}

    def with_output(self, output: int) -> Estimate:
        return replace(self, output=output)

    def affordable_output(self, cost: float | None, tokens: int | None) -> int | None:
        """The largest output limit that `max_affordable` (cost, tokens) still admits after
        this prompt, or None when nothing limits it."""
        limits: list[float] = []
        if tokens is not None:
            limits.append(tokens - self.prompt)
        if cost is not None and self.route.output_price:
            prompt_cost = self.prompt * (self.route.input_price or 0.0)
            # A hair under the exact quotient, so that rounding never asks for more than fits.
            limits.append((cost - prompt_cost) / self.route.output_price * (1 - 1e-9))
        elif cost is not None and self.prompt * (self.route.input_price or 0.0) > cost:
            limits.append(-1)
        if not limits:
            return None
        return max(-1, math.floor(min(limits)))
