"""What the proxy is told: its settings (:mod:`.settings`), the keys it accepts (:mod:`.keys`), its
projects and providers (:mod:`.projects`, read from the config file by :mod:`.file` and re-read by
:mod:`.reload`), and what models cost (:mod:`.pricing`, :mod:`.pricedb`).

Standard library only at import: the CLI reads the settings' defaults on every invocation.
"""
