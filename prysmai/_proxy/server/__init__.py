"""The proxy's server: the ASGI application and the forwarding path a request takes.

:mod:`.app` (lifecycle and routing), :mod:`.forward` (one request to the upstream and back, as one
trace), :mod:`.upstream` (the pooled upstream client), :mod:`.usage` (stream usage),
:mod:`.limits` (per-project rate and budget), :mod:`.guard` and :mod:`.disconnect` (what uvicorn's
protocol does not do for us), :mod:`.serve` and :mod:`.listen` (running it), :mod:`.logs` and
:mod:`.ratelog` (its log), :mod:`.demo_model` (the offline model behind ``--upstream demo``).
"""
