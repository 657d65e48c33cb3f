"""The self-hostable Prysm capture proxy (``pip install 'prysmai[proxy]'``).

``prysmai._cli`` imports :mod:`prysmai._proxy.cli.commands` on every ``prysmai`` invocation, including
``prysmai run`` where the proxy's extra may be absent, so nothing here (nor in ``cli``) imports
uvicorn or aiohttp at module level.

Modules, one concern each:

* ``config``     -- the proxy's settings (:class:`ProxyConfig`) and default paths.
* ``keys``       -- ``sk-prysm-`` keys from flags, environment and file: their strength and id.
* ``projects``   -- projects, their keys and providers, routing (the :class:`Tenancy` of a moment).
* ``projectconfig`` -- the ``--config`` file (TOML) read and checked into a tenancy.
* ``keyscli``    -- ``prysmai keys new | hash``.
* ``limits``     -- per-project requests per minute and monthly budget.
* ``reload``     -- when to re-read the config file (SIGHUP, a change of the file).
* ``app``        -- the pure-ASGI application: lifecycle, routing, auth.
* ``forward``    -- the forwarding path: a request to the upstream and back, as one trace.
* ``asgi``       -- the ASGI type aliases and small response helpers (JSON errors, body reading).
* ``usage``      -- asking a stream for its usage, and stripping that from what the client sees.
* ``readapi``    -- ``/api/v1/health`` and the read API (``traces``, ``stats``).
* ``upstream``   -- the pooled upstream client (aiohttp) behind a small interface; header filtering.
* ``capture``    -- turns a finished exchange into a trace row (SSE reassembly, usage, TTFT).
* ``pricing``    -- cost per model from the shipped ``pricing.json`` and an override file.
* ``pricedb``    -- prices the table lacks, by provider, from genai-prices (bundled data).
* ``store``      -- SQLite (WAL) trace store: bounded queue, background batch writer (never dies).
* ``migrations`` -- schema versions; a store of an earlier prysmai is upgraded in place.
* ``rollups``    -- the hourly/daily rollup tables, folded once per writer batch.
* ``queries``    -- the one query layer (filters, aggregates, pagination) and its read runner.
* ``guard``      -- header-read timeout, header size limit and connection cap on uvicorn's protocol.
* ``disconnect`` -- noticing a client that left a non-streamed call, to cancel the upstream.
* ``web``        -- the dashboard served at ``/`` (pages, log-in, its JSON endpoints).
* ``demo_model`` -- the built-in offline model behind ``--upstream demo``.
* ``server``     -- running the app on uvicorn, in the foreground or on a background thread.
* ``listen``     -- binding the listening socket before anything is announced or created.
* ``logs``       -- one log format (text or JSON, timestamped, no colour) for ours and uvicorn's.
* ``ratelog``    -- flood-proof warnings: the first at once, then one summary per interval.
* ``private_files`` -- the store created 0600 in a 0700 directory.
* ``report``     -- tables and summaries for the terminal.
* ``jsonshape``  -- the one JSON shape of CLI ``--json`` output and the read API.
* ``cli``        -- ``prysmai proxy | ui | traces | stats | demo | keys``.
* ``demo``       -- the ``prysmai demo`` sample application.
"""
