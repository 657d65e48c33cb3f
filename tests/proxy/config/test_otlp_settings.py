"""Where the OTLP export goes (config/otlp.py): the flag, then OpenTelemetry's variables, as its
exporters read them; content opt-in by the GenAI conventions' variable."""

from __future__ import annotations

import pytest

from prysmai._proxy.config.otlp import OtlpError, content_from_env, endpoint_from, shown


def test_the_flag_then_the_traces_variable_then_the_base_variable() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318/", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x"}
    assert endpoint_from("http://flag:4318", env) == "http://flag:4318/v1/traces"
    assert endpoint_from("https://cloud.langfuse.com/api/public/otel", {}) == (
        "https://cloud.langfuse.com/api/public/otel/v1/traces"
    )
    assert endpoint_from("http://flag:4318/v1/traces", env) == "http://flag:4318/v1/traces"
    assert endpoint_from(None, env) == "http://t:1/x"  # used as it is, as the exporters do
    assert endpoint_from(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318/"}) == "http://base:4318/v1/traces"
    assert endpoint_from(None, {}) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("collector:4318", "http:// or https:// URL"),
        ("http://user:secret@c:4318", "must not hold a user or password"),
        ("http://c:99999", "invalid port"),
    ],
)
def test_bad_endpoints_say_what_to_do_without_echoing_a_password(url: str, message: str) -> None:
    with pytest.raises(OtlpError, match=message) as caught:
        endpoint_from(url, {})
    assert "secret" not in str(caught.value)


def test_content_is_opt_in() -> None:
    assert not content_from_env({})
    assert not content_from_env({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "false"})
    for value in ("true", "True", "SPAN_ONLY", "span_and_event"):
        assert content_from_env({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": value})
    assert shown("https://c:4318/v1/traces?x=1") == "https://c:4318/v1/traces"
