"""Generate ``components/monitoring/prometheusrule.yaml`` from ``deploy/prometheus/alerts.yml``.

WHY a generator: the alert rules have one source, the file promtool unit-tests and Docker Compose's
Prometheus loads. The Prometheus Operator wants the same groups wrapped in a ``PrometheusRule`` object; a
copy edited by hand would drift. ``tests/test_kubernetes.py`` checks that the committed file is exactly
this script's output and that its groups equal alerts.yml's.

Run ``python deploy/kubernetes/generate_prometheusrule.py`` after editing alerts.yml, and commit both files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
OUTPUT = HERE / "components" / "monitoring" / "prometheusrule.yaml"
HEADER = (
    "# GENERATED from deploy/prometheus/alerts.yml by deploy/kubernetes/generate_prometheusrule.py: do not edit.\n"
    "# The same alert rules for the Prometheus Operator (its ruleSelector must select these labels).\n"
)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Multi-line expressions as literal blocks, as alerts.yml writes them, so the file stays readable."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "lstm-serve",
            "labels": {"app.kubernetes.io/name": "lstm-serve", "app.kubernetes.io/part-of": "lstm-serve"},
        },
        "spec": {"groups": alerts["groups"]},
    }


def render(alerts_path: Path = ALERTS) -> str:
    alerts = yaml.safe_load(alerts_path.read_text())
    body = yaml.dump(prometheus_rule(alerts), Dumper=_Dumper, sort_keys=False, width=200, allow_unicode=True)
    return HEADER + body


def main(argv: list[str]) -> int:
    """Write the file, or with ``--check`` only say whether the committed one is current (exit 1 if not)."""
    text = render()
    if "--check" in argv:
        current = OUTPUT.exists() and OUTPUT.read_text() == text
        print(f"{OUTPUT} is {'current' if current else 'STALE: run without --check'}")
        return 0 if current else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
