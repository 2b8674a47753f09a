from __future__ import annotations

# The commented example config documents every key with its default; keep them in step.
from pathlib import Path

import msgspec

from backupjobd import config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "backupjobd.toml"


def test_example_config_loads_and_matches_the_built_in_defaults() -> None:
    loaded = config.load(EXAMPLE, {})
    defaults = config.build({}, {})
    assert config.replace(loaded, source="", origins={}) == config.replace(
        defaults, source="", origins={}
    )


def test_example_config_names_every_key() -> None:
    text = EXAMPLE.read_text()
    sections = (
        config.AzureConfig,
        config.DatabaseConfig,
        config.PollingConfig,
        config.ThrottleConfig,
        config.StuckConfig,
        config.ApiConfig,
        config.DiscoveryConfig,
        config.LogConfig,
    )
    for section in sections:
        for field in msgspec.structs.fields(section):
            assert f"\n{field.name} = " in text, field.name
