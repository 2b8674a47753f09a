"""The Grafana dashboard in config/ queries only metrics the daemon exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from backupjobd.adapters.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "backupjobd-dashboard.json"
METRIC_RE = re.compile(r"\b((?:backupjobd|process|python)_[a-z_]+)\b")


def exported_names() -> set[str]:
    """Every sample name the registry can export, labelled families not yet set included."""
    registry = Metrics().registry
    return set(registry._names_to_collectors)  # the names prometheus-client registered


def test_every_metric_the_dashboard_queries_exists() -> None:
    document = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in document["panels"] for t in panel["targets"]]
    assert len(exprs) >= 15
    used = {name for expr in exprs for name in METRIC_RE.findall(expr)}
    assert {"backupjobd_jobs", "backupjobd_read_rate_learned", "process_cpu_seconds_total"} <= used
    missing = sorted(used - exported_names())
    assert missing == [], f"the dashboard queries metrics nobody exports: {missing}"


def test_the_dashboard_is_importable() -> None:
    document = json.loads(DASHBOARD.read_text())
    assert document["uid"] == "backupjobd" and document["panels"]
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in document["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
