"""The PostgreSQL engine (``--db postgresql://…``, the ``prysmai[postgres]`` extra): the store that
several proxies share. :mod:`.engine` (connections, partitions, the idempotent batch insert, the
dialect), :mod:`.schema` (tables, the ``traces`` view, migrations), :mod:`.rollups` (their fold)."""
