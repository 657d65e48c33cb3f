"""Prysm keys from flags, environment and file: their strength, their id (config/keys.py)."""

from __future__ import annotations

from typing import Any

import pytest

from prysmai._proxy.config.keys import KeyConfigError, collect_keys, generate_key, key_id
from prysmai._proxy.config.pricing import PriceTable
from prysmai._proxy.config.projects import flat

PRICES = PriceTable.load()


# -- keys ----------------------------------------------------------------------------------------
def test_flat_tenancy_accepts_only_configured_keys() -> None:
    ring = flat(["sk-prysm-aaa", "sk-prysm-bbb"], "https://api.openai.com/v1", "sk-upstream-secret")
    assert ring.check(b"sk-prysm-aaa") and ring.check(b"sk-prysm-bbb")
    assert not ring.check(b"sk-prysm-aa") and not ring.check(b"sk-prysm-aaaa") and not ring.check(b"")
    entry = ring.identify(b"Bearer sk-prysm-bbb")
    assert entry is not None and entry.key_id == key_id("sk-prysm-bbb") and entry.project_name == "default"
    assert ring.identify(b"bearer sk-prysm-aaa") is not None
    assert ring.identify(None) is None and ring.identify(b"sk-prysm-aaa") is None
    assert "sk-prysm" not in repr(ring) and "sk-upstream-secret" not in repr(ring.projects["default"])


def test_keys_come_from_flags_env_and_file(tmp_path: Any) -> None:
    keys_file = tmp_path / "keys"
    k = {name: f"sk-prysm-{name}-0123456789abcdef" for name in ("file1", "file2", "env1", "env2", "flag")}
    keys_file.write_text(f"# team keys\n{k['file1']}\n\n  {k['file2']}  \n")
    env = {"PRYSM_PROXY_KEYS": f"{k['env1']}, {k['env2']},", "PRYSM_PROXY_KEYS_FILE": str(keys_file)}
    keys = collect_keys([k["flag"], k["env1"]], None, env)
    assert keys == [k["flag"], k["env1"], k["env2"], k["file1"], k["file2"]]
    assert collect_keys([], None, {}) == []


@pytest.mark.parametrize("bad", ["sk-live-secretvalue", "sk-prysm-", "sk-prysm-has secret"])
def test_malformed_key_is_refused_without_echo(bad: str) -> None:
    with pytest.raises(KeyConfigError) as info:
        collect_keys([bad], None, {})
    secret = bad.replace("sk-prysm-", "")
    assert not secret or secret not in str(info.value)


def test_generated_keys_are_valid_and_distinct() -> None:
    a, b = generate_key(), generate_key()
    assert a != b and collect_keys([a, b], None, {}) == [a, b]
