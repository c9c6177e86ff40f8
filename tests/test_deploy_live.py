"""The deployment against a REAL service: its /metrics, the image's command, and a real Prometheus.

- Every metric the dashboard and the alert rules query is one the live service exports (read from
  ``/metrics`` after real traffic), with the labels the queries use.
- The image's command runs as the Dockerfile says (build-stage wheel, runtime-stage install into a fresh
  virtualenv without torch, the image's ENV, WORKDIR, ENTRYPOINT + CMD and HEALTHCHECK) and serves.
- Debian's Prometheus (installed by ``.ci/run``) runs the project's own ``prometheus.yml`` (only the
  targets and intervals rewritten) and alert rules against the live service: the target is up,
  ``histogram_quantile(0.99, ...)`` over the request histogram is a number, every rule evaluates, and
  every dashboard query is accepted by the real query engine.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests import deploy_support as ds
from tests.conftest import ServerHandle

WAIT_S = 60.0  # upper bound of every wait below; each normally ends in a few seconds
TASK_ENDPOINTS = {"sentiment": ("/v1/sentiment", {"texts": ["a gripping , funny and humane film ."]})}
TRANSLATION_REQUEST = ("/v1/translate", {"texts": ["a dog runs on the beach ."], "beam_size": 1})
TASK_ENDPOINTS["translation"] = TRANSLATION_REQUEST


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S, every_s: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` (and the last error) after the bound."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except (httpx.HTTPError, OSError, KeyError, ValueError) as error:
            last = error
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}")


def served_requests(url: str) -> list[tuple[str, dict[str, Any]]]:
    """One valid request per served model (the shipped repository decides which tasks exist)."""
    cards = httpx.get(f"{url}/v1/models", timeout=10).json()["models"]
    return [TASK_ENDPOINTS[card["task"]] for card in cards]


def send_traffic(url: str, rounds: int = 3) -> None:
    """Valid requests for every model, plus one invalid one so ``rejected_total{reason}`` has a series."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(rounds):
            for path, body in served_requests(url):
                assert client.post(path, json=body).status_code == 200, path
        assert client.post("/v1/sentiment", json={"texts": []}).status_code == 422


def all_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every dashboard target, template variable and alert rule."""
    dashboard = ds.load_dashboard()
    queries = [
        (f"panel {panel['title']!r}", ds.grafana_to_promql(expr)) for panel, expr in ds.dashboard_exprs(dashboard)
    ]
    queries += [("template variable", name) for name in ds.template_metric_names(dashboard)]
    queries += [(f"alert {name}", expr) for name, expr in ds.rule_exprs()]
    return queries


# ---------------------------------------------------------------- metric names against a live /metrics


def test_queries_name_only_metrics_and_labels_the_service_exports(live_server: ServerHandle) -> None:
    send_traffic(live_server.url)
    exported = ds.exported_metrics(httpx.get(f"{live_server.url}/metrics", timeout=10).text)
    assert "lstm_serve_request_duration_seconds_bucket" in exported
    target_labels = {"job", "instance", "service"}  # added by Prometheus and prometheus.yml, not the service
    for where, expr in all_queries():
        assert ds.metric_names(expr), f"{where}: no metric in {expr!r}"
        names = ds.metric_names(expr) - ds.PROMETHEUS_SYNTHETIC
        unknown = names - set(exported) - ds.NVML_ONLY_METRICS
        assert not unknown, f"{where} queries {sorted(unknown)}, which /metrics does not export"
        known_labels = set().union(*(exported.get(name, set()) for name in names)) | target_labels | {"le"}
        for name, labels in ds.selector_labels(expr).items():
            if exported.get(name):  # a family with samples: its labels are known
                assert labels <= exported[name] | target_labels, (
                    f"{where}: {name} has no label {labels - exported[name]}"
                )
        if all(exported.get(name) for name in names):
            assert ds.grouping_labels(expr) <= known_labels, f"{where}: grouping by unknown labels in {expr!r}"


# ---------------------------------------------------------------- the image's command, run as the image would


class ImageEmulation:
    """The Docker build and run steps of the CPU image, done on this machine in ``root`` instead of ``/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dockerfile = ds.parse_dockerfile()
        self.build_args = {"FLAVOUR": "cpu"}

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def copy_stage_sources(self, stage: ds.Stage) -> Path:
        """Realise a stage's context COPYs under its WORKDIR, filtered by .dockerignore like the build context.

        Docker's rules: a folder's contents go into the destination; a file goes into a destination
        ending in ``/`` under its own name, else to the destination path itself.
        """
        workdir = self.path(stage.last("WORKDIR"))
        patterns = ds.dockerignore_patterns()

        def ignore(folder: str, names: list[str]) -> set[str]:
            relative = Path(folder).relative_to(ds.REPO_ROOT)
            return {name for name in names if not ds.in_build_context(str(relative / name), patterns)}

        for source, dest in ds.copy_sources(stage):
            src, target = ds.REPO_ROOT / source, workdir / dest
            if src.is_dir():
                shutil.copytree(src, target, ignore=ignore, dirs_exist_ok=True)
            else:
                target = target / src.name if dest.endswith("/") else target
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
        return workdir

    def env(self, port: int) -> dict[str, str]:
        env = {"HOME": str(self.root), "LANG": "C.UTF-8"}
        for key, value in self.dockerfile.image_env(self.build_args).items():
            value = value.replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
            for image_dir in ("/opt/venv", "/app"):
                value = value.replace(image_dir, str(self.path(image_dir)))
            env[key] = value
        env["LSTM_SERVE_PORT"] = str(port)
        return env

    def command(self, argv: list[str], env: dict[str, str]) -> list[str]:
        """An exec-form command as Docker runs it: argv[0] looked up on the image's PATH, /app paths mapped."""
        executable = shutil.which(argv[0], path=env["PATH"])
        assert executable and executable.startswith(str(self.root)), f"{argv[0]} resolves to {executable}"
        return [executable, *(str(self.path(a)) if a.startswith("/app/") else a for a in argv[1:])]


def run(argv: list[str]) -> None:
    """A build step: quiet when it works, its whole output in the failure when it does not."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{argv}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageEmulation:
    """Build stage (``pip wheel --no-deps`` of the copied context) then runtime-cpu (fresh venv, install, guard)."""
    emulation = ImageEmulation(tmp_path_factory.mktemp("image"))
    dockerfile = emulation.dockerfile
    source = emulation.copy_stage_sources(dockerfile.stage("build"))
    dist = emulation.path("/dist")
    venv = emulation.path("/opt/venv")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(dist), str(source)])
    run([sys.executable, "-m", "venv", str(venv)])
    wheels = sorted(dist.glob("lstm_serve-*.whl"))
    assert len(wheels) == 1, wheels
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheels[0])])
    emulation.copy_stage_sources(dockerfile.stage("serving"))
    return emulation


def test_image_environment_passes_its_build_guard(image: ImageEmulation) -> None:
    """The runtime-cpu stage's own guard: plain onnxruntime with its CPU provider, and no torch."""
    guard = next(run for run in image.dockerfile.stage("runtime-cpu").all("RUN") if "verify_serving_env.py" in run)
    args = guard.rsplit("verify_serving_env.py", 1)[1].split("&&")[0].split()
    python = image.path("/opt/venv") / "bin" / "python"
    result = subprocess.run(
        [str(python), str(ds.DEPLOY / "verify_serving_env.py"), *args], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_image_command_serves_and_its_healthcheck_passes(image: ImageEmulation) -> None:
    serving = image.dockerfile.stage("serving")
    port = ds.free_port()
    env = image.env(port)
    assert env["LSTM_SERVE_HOST"] == "0.0.0.0"
    argv = image.command(serving.exec_form("ENTRYPOINT") + serving.exec_form("CMD"), env)
    health = image.command(serving.healthcheck_command(), env)
    # Nothing listens yet: the probe must fail, so its later success means something.
    assert subprocess.run(health, env=env, cwd=image.path("/app"), capture_output=True, timeout=30).returncode == 1
    log_path = image.root / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=image.path(serving.last("WORKDIR")), env=env, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert process.poll() is None, f"server exited {process.returncode}: {log_path.read_text()[-3000:]}"
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200

        wait_for("the image's command to answer /readyz 200", ready, timeout_s=120)
        probe = subprocess.run(health, env=env, cwd=image.path("/app"), capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0, probe.stderr
        for path, body in served_requests(url):
            assert httpx.post(f"{url}{path}", json=body, timeout=30).status_code == 200, path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, f"graceful stop expected:\n{log_path.read_text()[-3000:]}"


# ---------------------------------------------------------------- a real Prometheus on the project's config


def prometheus_config(server: str, listen: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with only the target addresses and the intervals changed."""
    config = yaml.safe_load(ds.PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str((ds.PROMETHEUS_CONFIG.parent / f).resolve()) for f in config["rule_files"]]
    addresses = {"lstm-serve": server, "prometheus": listen}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [addresses[job["job_name"]]]
    return config


@pytest.fixture(scope="module")
def prometheus(live_server: ServerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: install Debian's `prometheus` package (.ci/run does)"
    root = tmp_path_factory.mktemp("prometheus")
    listen = f"127.0.0.1:{ds.free_port()}"
    config_path = root / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(prometheus_config(live_server.url.removeprefix("http://"), listen)))
    check = subprocess.run(["promtool", "check", "config", str(config_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log_path = root / "prometheus.log"
    args = [binary, f"--config.file={config_path}", f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address={listen}", "--log.level=warn"]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://{listen}"
    try:

        def ready() -> bool:
            assert process.poll() is None, f"prometheus exited: {log_path.read_text()[-3000:]}"
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200

        wait_for("Prometheus to be ready", ready, timeout_s=30)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def query(prometheus_url: str, promql: str) -> dict[str, Any]:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{promql!r}: {body.get('error')}"
    return body["data"]


@pytest.fixture(scope="module")
def traffic(live_server: ServerHandle) -> Iterator[None]:
    """Steady requests in the background while Prometheus scrapes, so rates are non-zero."""
    stop = threading.Event()
    requests = served_requests(live_server.url)

    def loop() -> None:
        with httpx.Client(base_url=live_server.url, timeout=30) as client:
            while not stop.is_set():
                for path, body in requests:
                    client.post(path, json=body)
                stop.wait(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=60)


def wait_for_target_up(prometheus_url: str) -> None:
    def target_up() -> bool:
        targets = httpx.get(f"{prometheus_url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return any(t["labels"]["job"] == "lstm-serve" and t["health"] == "up" for t in targets)

    wait_for("the lstm-serve target to be up in Prometheus", target_up)


@pytest.mark.prometheus
def test_prometheus_scrapes_the_service_and_computes_p99(prometheus: str, traffic: None) -> None:
    wait_for_target_up(prometheus)
    assert query(prometheus, 'up{job="lstm-serve"}')["result"][0]["value"][1] == "1"

    p99 = 'histogram_quantile(0.99, sum by (le) (rate(lstm_serve_request_duration_seconds_bucket{model!=""}[10s])))'

    def p99_value() -> float | None:
        result = query(prometheus, p99)["result"]
        value = float(result[0]["value"][1]) if result else math.nan
        return value if math.isfinite(value) else None

    seconds = wait_for("a finite p99 request latency from Prometheus", p99_value)
    assert 0 < seconds < 30, seconds


@pytest.mark.prometheus
def test_prometheus_evaluates_every_alert_rule(prometheus: str, traffic: None) -> None:
    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = rules and all(not rule["lastEvaluation"].startswith("0001") for rule in rules)
        return rules if done else None

    wait_for_target_up(prometheus)
    time.sleep(1.5)  # one more evaluation (interval 1s) after the first successful scrape
    rules = wait_for("every alert rule to be evaluated", rules_evaluated)
    assert {rule["name"] for rule in rules} == {name for name, _ in ds.rule_exprs()}
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    down = next(rule for rule in rules if rule["name"] == "LstmServeTargetDown")
    assert down["state"] == "inactive"  # the service is up: the alert must not even be pending


@pytest.mark.prometheus
def test_prometheus_answers_every_dashboard_query(prometheus: str, traffic: None) -> None:
    """Prometheus's own engine accepts each query; the core panels show data from the live service."""
    dashboard = ds.load_dashboard()
    wait_for("request samples in Prometheus", lambda: query(prometheus, "lstm_serve_requests_total")["result"])
    with_data = {"Requests / s", "p99 latency (2xx)", "Queued items", "Request rate by model / endpoint / status",
                 "Request latency p50 / p95 / p99 (2xx)", "Batch size (items): mean, p50, p95",
                 "Served models and provider", "Memory: GPU used, process RSS"}  # fmt: skip
    for panel in ds.dashboard_panels(dashboard):
        queries = [ds.grafana_to_promql(t["expr"], rate_interval="10s") for t in panel.get("targets", [])]
        for promql in queries:
            query(prometheus, promql)  # parses and evaluates, even when no series matches yet
        if panel["title"] in with_data:  # at least one of its queries returns series

            def any_data(queries: list[str] = queries) -> bool:
                return any(query(prometheus, promql)["result"] for promql in queries)

            wait_for(f"data for panel {panel['title']!r}", any_data)
