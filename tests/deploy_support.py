"""Readers for the deployment files, shared by ``test_deploy_static.py`` and ``test_deploy_live.py``.

WHY here and not in the product: there is no Docker engine or Grafana on the test machines, so the tests
read the Dockerfile, ``.dockerignore``, ``docker-compose.yml`` and the dashboard the way those tools do
(well enough to catch a missing file, a wrong port or a metric the service does not export) and run
what can run for real: promtool, Prometheus, and the image's command on a fresh virtualenv.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE_CPU_FILE = REPO_ROOT / "docker-compose.cpu.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lstm-serve.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "lstm-serve.yml"

# GPU gauges exist only where NVML answers (service/metrics.py); panels using them must tolerate no data.
NVML_ONLY_METRICS = frozenset({"lstm_serve_gpu_memory_used_bytes", "lstm_serve_gpu_utilization_ratio"})
# Series Prometheus makes itself for every target, not exported by the service.
PROMETHEUS_SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def free_port() -> int:
    """A free loopback TCP port (for the Prometheus and image-command processes the tests start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- docker compose


class _Reset:
    """Compose's ``!reset`` tag: the key is removed from the merged file."""


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())

_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` substitution (the forms the project's compose files use)."""
    values = env or {}

    def replace(match: re.Match[str]) -> str:
        value = values.get(match["name"])
        if value is None:
            if match["default"] is None:
                raise KeyError(f"{match['name']} has no default in {text[:40]!r}...")
            return match["default"]
        return value

    return _INTERPOLATION.sub(replace, text)


def load_compose(path: Path = COMPOSE_FILE, env: dict[str, str] | None = None) -> dict[str, Any]:
    return yaml.load(interpolate(path.read_text(), env), Loader=_ComposeLoader)  # a SafeLoader subclass


def merge_compose(base: Any, override: Any) -> Any:
    """Compose's merge of ``-f base -f override`` for mappings and scalars, with ``!reset``."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, _Reset):
                merged.pop(key, None)
            else:
                merged[key] = merge_compose(base.get(key), value) if key in base else value
        return merged
    return override


def bind_mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(host path, container path) of each bind mount in a service's short-syntax ``volumes``."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            yield source, target


def named_volumes(service: dict[str, Any]) -> Iterator[str]:
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if not source.startswith((".", "/")):
            yield source


def container_ports(service: dict[str, Any]) -> dict[int, int]:
    """container port -> published host port, from short-syntax ``ports``."""
    ports = {}
    for entry in service.get("ports", []):
        host, container = str(entry).rsplit(":", 1)
        ports[int(container)] = int(host.rsplit(":", 1)[-1])
    return ports


def host_path_for(service: dict[str, Any], container_path: str) -> Path | None:
    """The repo file a container path comes from through the service's bind mounts, if any."""
    for source, target in bind_mounts(service):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return (REPO_ROOT / source / os.path.relpath(container_path, target)).resolve()
    return None


# ---------------------------------------------------------------- Dockerfile and .dockerignore


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str:
        values = self.all(keyword)
        assert values, f"stage {self.name} has no {keyword}"
        return values[-1]

    def env(self) -> dict[str, str]:
        """The stage's ``ENV key=value`` pairs (later wins), as the image's environment holds them."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
                values[pair[0]] = pair[1].strip('"')
        return values

    def exec_form(self, keyword: str) -> list[str]:
        value = json.loads(self.last(keyword))
        assert isinstance(value, list), f"{keyword} of {self.name} must use the exec (JSON) form"
        return value

    def healthcheck_command(self) -> list[str]:
        """The exec-form command of ``HEALTHCHECK [options] CMD [...]``."""
        _options, _, command = self.last("HEALTHCHECK").partition(" CMD ")
        value = json.loads(command)
        assert isinstance(value, list), f"HEALTHCHECK of {self.name} must use the exec (JSON) form"
        return value


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)

    def resolved_base(self, stage: Stage, build_args: dict[str, str] | None = None) -> str:
        args = self.global_args | (build_args or {})
        return re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], stage.base)

    def chain(self, build_args: dict[str, str] | None = None) -> list[Stage]:
        """The final stage and the stages it is built FROM, base first, for these build args."""
        names = {stage.name: stage for stage in self.stages}
        chain = [self.stages[-1]]
        while (base := self.resolved_base(chain[0], build_args)) in names:
            chain.insert(0, names[base])
        return chain

    def image_env(self, build_args: dict[str, str] | None = None) -> dict[str, str]:
        """The ENV the final image has (inherited stages first; base-image ENV other than PATH not known)."""
        env: dict[str, str] = {}
        for stage in self.chain(build_args):
            env |= stage.env()
        return env


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """Instructions per stage, with line continuations joined and comments dropped (no heredocs used)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, flags=re.IGNORECASE)
            assert match, line
            stages.append(Stage(match[2] or str(len(stages)), match[1]))
        elif not stages and keyword == "ARG":
            name, _, default = args.partition("=")
            global_args[name] = default
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return Dockerfile(global_args, stages)


def copy_sources(stage: Stage) -> list[tuple[str, str]]:
    """(source, destination) of each ``COPY`` from the build context (not ``--from``)."""
    pairs = []
    for args in stage.all("COPY"):
        parts = args.split()
        if any(part.startswith("--from") for part in parts):
            continue
        parts = [part for part in parts if not part.startswith("--")]
        pairs.extend((source, parts[-1]) for source in parts[:-1])
    return pairs


def context_bind_mounts(stage: Stage) -> list[str]:
    """Sources of ``RUN --mount=type=bind,source=...`` taken from the build context (no ``from=``)."""
    sources = []
    for args in stage.all("RUN"):
        for mount in re.findall(r"--mount=(\S+)", args):
            options = dict(option.partition("=")[::2] for option in mount.split(","))
            if options.get("type") == "bind" and "from" not in options:
                sources.append(options["source"])
    return sources


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob: ``*`` stays within one path element, ``**`` spans any number."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    return re.compile(regex)


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exclusion, compiled pattern) in file order."""
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        cleaned = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        patterns.append((not negated, _glob_regex(cleaned)))
    return patterns


def in_build_context(relative: str, patterns: list[tuple[bool, re.Pattern[str]]] | None = None) -> bool:
    """Whether Docker sends this path: the last pattern matching it or one of its parents decides."""
    rules = dockerignore_patterns() if patterns is None else patterns
    parts = Path(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for excludes, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            included = not excludes
    return included


# ---------------------------------------------------------------- PromQL in rules and the dashboard

_GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$model": ".+"}
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "inf", "nan", "atan2",
}  # fmt: skip
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def grafana_to_promql(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard expression with Grafana's variables replaced by values Prometheus accepts."""
    values = dict(_GRAFANA_VARS, **{"$__rate_interval": rate_interval})
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels and literals left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    text = re.sub(r"(?<![A-Za-z_:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group(0)
        follows = text[match.end() :].lstrip()
        if name.lower() in _KEYWORDS or follows.startswith("("):
            continue
        names.add(name)
    return names


def selector_labels(expr: str) -> dict[str, set[str]]:
    """metric name -> label names used in its ``{...}`` selector."""
    used: dict[str, set[str]] = {}
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr):
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", match[2]))
        used.setdefault(match[1], set()).update(labels)
    return used


def grouping_labels(expr: str) -> set[str]:
    """Labels named in ``by (...)``/``without (...)``/``on (...)`` clauses."""
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels.update(label.strip() for label in group.split(",") if label.strip())
    return labels


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(panel, expression) for every query target of every panel."""
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target["expr"]


def template_metric_names(dashboard: dict[str, Any]) -> set[str]:
    """Metrics behind ``label_values(metric, label)`` template variables."""
    names = set()
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+)\s*,\s*(\w+)\)", variable["definition"])
        assert match, f"variable {variable['name']}: unsupported query {variable['definition']!r}"
        names.add(match[1])
    return names


def rule_exprs(path: Path = ALERT_RULES) -> Iterator[tuple[str, str]]:
    """(alert name, expression) for every rule."""
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def exported_metrics(exposition: str) -> dict[str, set[str]]:
    """Sample name -> label names, from a ``/metrics`` text, including families that have no samples yet.

    prometheus_client writes ``# TYPE`` for every registered metric, also a labelled one nothing has
    touched; the sample names a family will have follow from its type.
    """
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for suffix in suffixes.get(family.type, ("",)):
            exported.setdefault(family.name + suffix, set())
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported
