"""The read API: ``/api/v1/health`` and the JSON reads of the traces (:mod:`.reads`), behind both
``/api/v1`` and the dashboard, in the one JSON shape that the CLI's ``--json`` prints too
(:mod:`.jsonshape`)."""
