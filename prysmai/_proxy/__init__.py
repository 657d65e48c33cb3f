"""The self-hostable Prysm capture proxy (``pip install 'prysmai[proxy]'``).

Its rooms: ``server/`` (the ASGI app and the forwarding path), ``store/`` (where traces are written
and read: the store facade, the writer, the query layer, the SQLite engine), ``config/`` (settings,
keys, projects, prices), ``api/`` (the read API and its JSON shape), ``web/`` (the dashboard),
``cli/`` (the ``prysmai`` commands), and ``asgi.py`` (the HTTP vocabulary they share).
docs/ARCHITECTURE.md follows one request and one dashboard query through them.
"""
