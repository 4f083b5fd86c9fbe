"""Heimdall for the LiteLLM proxy: virtual-key authentication, a hold before each call and
usage after it. See docs/integrations/litellm.md in the Heimdall repository."""

from .client import Decision, HeimdallClient, Unavailable
from .settings import Settings, SettingsError

__all__ = ["Decision", "HeimdallClient", "Settings", "SettingsError", "Unavailable"]
__version__ = "0.1.0"
