"""Everything that knows how openai differs between releases (1.0.0 to 3.x) lives here."""

from __future__ import annotations

import functools

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The base URL an OpenAI client has when it targets OpenAI's own API (openai adds the slash).
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1/"


@functools.cache
def client_classes() -> tuple[type, type]:
    """``(openai.OpenAI, openai.AsyncOpenAI)``."""
    import openai

    return openai.OpenAI, openai.AsyncOpenAI


@functools.cache
def azure_classes() -> tuple[type, ...]:
    try:
        from openai.lib.azure import AsyncAzureOpenAI, AzureOpenAI
    except ImportError:  # pragma: no cover - every supported release has them
        return ()
    return AzureOpenAI, AsyncAzureOpenAI


@functools.cache
def _not_given_type() -> type:
    from openai._types import NotGiven

    return NotGiven


@functools.cache
def _omit() -> object:
    from openai._types import Omit

    return Omit()


def custom_default_headers(client: Any) -> Any:
    """The ``default_headers=`` a client was built with (an attribute of every release, 1.0.0 to 3.x)."""
    return client.__dict__.get("_custom_headers")


def omit_shadowed_defaults(defaults: Any, headers: dict[str, Any]) -> dict[str, Any]:
    """``headers`` for one call, led by ``Omit`` for each default header they set in another case.

    openai 1.x/2.x merge the client's default headers with a call's as dicts, case-sensitively:
    ``authorization`` from ``default_headers`` and ``Authorization`` from the call would both be
    sent. ``Omit`` removes a default in every release; 3.x merges case-insensitively, in order, so
    the markers come first there.
    """
    lowered = {name.lower(): name for name in headers}
    omitted = {name: _omit() for name in defaults if lowered.get(name.lower(), name) != name}
    if not omitted:
        return headers
    return {**omitted, **headers}


def is_given(value: object) -> bool:
    """False for openai's ``NOT_GIVEN`` sentinel (and ``None``)."""
    return value is not None and not isinstance(value, _not_given_type())


def unsupported_reason(client: object) -> str | None:
    """Why ``client`` cannot be routed through the Prysm proxy, or ``None`` if it can."""
    if not isinstance(client, client_classes()):
        return (
            f"prysmai takes an openai.OpenAI or openai.AsyncOpenAI client, not {type(client).__qualname__}. "
            "Create one with openai.OpenAI() and pass it, or use PrysmClient(...).openai()."
        )
    if isinstance(client, azure_classes()):
        return (
            "Azure OpenAI clients cannot be routed through the Prysm proxy: they rewrite request paths per "
            "deployment and authenticate with Azure credentials. Use an openai.OpenAI client instead."
        )
    # introduced in openai 3.x: provider runtimes (e.g. Bedrock) sign each request for their provider.
    if getattr(client, "_provider_runtime", None) is not None:
        return (
            "clients built with provider=... (for example Bedrock) sign requests for their provider and "
            "cannot be routed through the Prysm proxy. Use a plain openai.OpenAI client instead."
        )
    # introduced in openai 2.x: workload identity exchanges or pins credentials for OpenAI's endpoints.
    if getattr(client, "workload_identity", None) is not None:
        return (
            "clients using workload_identity authenticate against OpenAI's own endpoints and cannot be "
            "routed through the Prysm proxy. Use a client with an API key instead."
        )
    # introduced in openai 3.x: data residency pins a regional OpenAI endpoint.
    if getattr(client, "_data_residency", None) is not None:
        return (
            "clients using data_residency pin a regional OpenAI endpoint; routing them through the Prysm "
            "proxy would drop that guarantee. Use a client without data_residency."
        )
    return None


def redirectable(client: Any) -> bool:
    """Whether ``instrument()`` may move this client's requests to the proxy."""
    return unsupported_reason(client) is None


def options_without_retries(options: Any) -> Any:
    """A copy of openai's ``FinalRequestOptions`` with retries off (``model_copy`` is in every release)."""
    from openai._compat import model_copy

    copied = model_copy(options)
    copied.max_retries = 0
    return copied
