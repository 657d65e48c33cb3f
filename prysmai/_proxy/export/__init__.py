"""Where the traces go beyond the store: OTLP export on OpenTelemetry's GenAI conventions.

The store fills an outbox as it writes (:mod:`..store.sqlite.outbox`); a child process
(:mod:`.worker`, started and watched by :class:`.process.ExportProcess`) reads it, turns each
trace into one span (:mod:`.spans`) and sends the spans with OpenTelemetry's SDK and OTLP/HTTP
exporter (the ``otel`` extra), off the proxy's interpreter and never on the request path.
"""
