"""The one provider interface and the registry that picks a provider for a model."""

from collections.abc import AsyncGenerator
from typing import Protocol

from django.conf import settings

from .events import ChatRequest, Event


class Provider(Protocol):
    """A model provider: one call, answered as an async iterator of typed events.

    The stream ends after a `Finished` or a `ReplyError` event. Closing the
    iterator early (`aclose()`) cancels the upstream call.
    """

    def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]: ...


_overrides: dict[str, Provider] = {}


def provider_override(model: str, provider: Provider | None) -> None:
    """Route one model id to another provider (tests use the scripted fake)."""
    if provider is None:
        _overrides.pop(model, None)
    else:
        _overrides[model] = provider


def model_available(model: str) -> bool:
    """Whether this deployment can answer with `model` right now."""
    if model in _overrides:
        return True
    spec = settings.CHAT_MODELS.get(model)
    if spec is None:
        return False
    if spec["provider"] == "cloudflare":
        return bool(settings.CLOUDFLARE_ACCOUNT_ID and settings.CLOUDFLARE_API_TOKEN)
    return True


def provider_for(model: str) -> Provider:
    if model in _overrides:
        return _overrides[model]
    spec = settings.CHAT_MODELS.get(model)
    if spec is None:
        raise LookupError(f"unknown model {model!r}")
    if spec["provider"] == "cloudflare":
        from .cloudflare import CloudflareProvider

        return CloudflareProvider.from_settings()
    from .local import LocalProvider

    return LocalProvider.shared()
