"""Kubernetes manifests: every overlay renders, validates offline, and keeps the platform rules.

Overlays are rendered by tests/deploy/kustomize.py (the subset of kustomize k8s/ uses, checked
against `kubectl kustomize` when kubectl is installed) and validated with kubernetes-validate's
strict schemas, so a misspelt field fails here rather than at `kubectl apply`.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.config import Settings
from orchestrator_svc.mesh.discovery import DNS_SCHEME, split_host_port
from tests.deploy.kustomize import (
    Manifest,
    UnsupportedKustomization,
    labels_match,
    render,
    strategic_merge,
)
from tests.deploy.project import ROOT, default_shutdown_grace_s, image, setting_names

K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod", "linkerd", "istio")
NAMESPACES = {"dev": "octollm-dev", "prod": "octollm", "linkerd": "octollm", "istio": "octollm"}
ORCHESTRATOR_REPLICAS = {"dev": 2, "prod": 3, "linkerd": 3, "istio": 3}
# The oldest Kubernetes we claim to support, and the newest schema the validator ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
MESH_KEYS = ("linkerd.io/inject", "sidecar.istio.io/inject")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def manifests(overlay: str) -> list[Manifest]:
    return render(K8S / "overlays" / overlay)


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_labels(deployment: Manifest) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"].get("labels", {}))


def selector_labels(selector: dict[str, Any]) -> dict[str, str]:
    """matchLabels of a LabelSelector; matchExpressions are not used here, so they fail."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return dict(selector.get("matchLabels", {}))


def containers(deployment: Manifest) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) for every container and init container of a Deployment."""
    spec = deployment["spec"]["template"]["spec"]
    for container in spec.get("initContainers", []) + spec["containers"]:
        yield spec, container


def grpc_port(container: dict[str, Any]) -> int:
    ports = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == "grpc"]
    assert len(ports) == 1, f"{container['name']}: one container port named grpc"
    return int(ports[0])


def orchestrator(manifests: list[Manifest]) -> Manifest:
    return named(manifests, "Deployment", "orchestrator")


def arms(manifests: list[Manifest]) -> list[Manifest]:
    found = [
        d
        for d in of_kind(manifests, "Deployment")
        if pod_labels(d).get("app.kubernetes.io/component") == "arm"
    ]
    assert found, "no arm Deployments rendered"
    return found


def config_data(manifests: list[Manifest]) -> dict[str, str]:
    return dict(named(manifests, "ConfigMap", "octollm-config")["data"])


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity as a number: "250m" -> 0.25, "512Mi" -> 536870912."""
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match, f"unexpected quantity {value!r}"
    assert match[2] in units, f"unexpected unit in {value!r}"
    return float(match[1]) * units[match[2]]


# --- rendering -------------------------------------------------------------------------------


def test_overlays_render_with_namespace(overlay: str, manifests: list[Manifest]) -> None:
    """Each overlay renders and puts every namespaced object in its namespace."""
    namespace = NAMESPACES[overlay]
    assert named(manifests, "Namespace", namespace)
    for manifest in manifests:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == namespace, manifest["metadata"]


def test_renderer_matches_kubectl_kustomize(overlay: str, manifests: list[Manifest]) -> None:
    """The test's renderer prints exactly what `kubectl kustomize` prints for the overlay."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: the rendering is not cross-checked (the rest still runs)")
    proc = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr

    def by_id(docs: list[Manifest]) -> dict[tuple[str, str, str], Manifest]:
        return {
            (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs
        }

    theirs = by_id([d for d in yaml.safe_load_all(proc.stdout) if d])
    assert by_id(manifests) == theirs


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    """An unsupported kustomization field fails loudly instead of rendering something else."""
    (tmp_path / "kustomization.yaml").write_text("commonLabels: {a: b}\nresources: []\n")
    with pytest.raises(UnsupportedKustomization, match="commonLabels"):
        render(tmp_path)


def test_strategic_merge_merges_named_lists_and_replaces_others() -> None:
    """Containers merge by name and keep unpatched fields; plain lists are replaced."""
    base = {"containers": [{"name": "a", "image": "x", "args": ["1", "2"]}, {"name": "b"}]}
    patch = {"containers": [{"name": "a", "args": ["3"]}, {"name": "c"}]}
    assert strategic_merge(base, patch) == {
        "containers": [{"name": "a", "image": "x", "args": ["3"]}, {"name": "b"}, {"name": "c"}]
    }


# --- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_strictly(manifests: list[Manifest], version: str) -> None:
    """kubernetes-validate (strict: unknown fields are errors) accepts every rendered object."""
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_validator_catches_a_misspelt_field(manifests: list[Manifest]) -> None:
    """The strict validation is real: a typo'd field and a named gRPC probe port are rejected."""
    typo = copy.deepcopy(orchestrator(manifests))
    typo["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSIONS[0], strict=True)
    named_port = copy.deepcopy(orchestrator(manifests))
    named_port["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = (
        "grpc"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(named_port, K8S_VERSIONS[0], strict=True)


# --- workloads ---------------------------------------------------------------------------------


def test_probes_are_native_grpc_on_the_numeric_grpc_port(manifests: list[Manifest]) -> None:
    """Startup, readiness and liveness probes are grpc.health.v1 probes on the gRPC port."""
    for deployment in of_kind(manifests, "Deployment"):
        for _, container in containers(deployment):
            port = grpc_port(container)
            for probe_name in PROBES:
                probe = container[probe_name]
                assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}
                assert type(probe["grpc"]["port"]) is int, "gRPC probes take numeric ports only"
                assert probe["grpc"]["port"] == port


def test_containers_are_locked_down(manifests: list[Manifest]) -> None:
    """Non-root 10001, read-only root, no escalation, no capabilities, RuntimeDefault seccomp."""
    for deployment in of_kind(manifests, "Deployment"):
        for pod, container in containers(deployment):
            effective = {**pod.get("securityContext", {}), **container["securityContext"]}
            assert effective["runAsNonRoot"] is True
            assert effective["runAsUser"] == 10001
            assert effective["readOnlyRootFilesystem"] is True
            assert effective["allowPrivilegeEscalation"] is False
            assert effective["capabilities"]["drop"] == ["ALL"]
            assert not effective["capabilities"].get("add")
            assert effective["seccompProfile"]["type"] == "RuntimeDefault"
            assert pod["automountServiceAccountToken"] is False


def test_tmp_is_a_writable_empty_dir(manifests: list[Manifest]) -> None:
    """With a read-only root filesystem, /tmp is an emptyDir volume."""
    for deployment in of_kind(manifests, "Deployment"):
        for pod, container in containers(deployment):
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]


def test_resources_have_requests_within_limits(manifests: list[Manifest]) -> None:
    """Every container requests and limits CPU and memory, requests no more than limits."""
    for deployment in of_kind(manifests, "Deployment"):
        for _, container in containers(deployment):
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = quantity(resources["requests"][resource])
                limit = quantity(resources["limits"][resource])
                assert 0 < request <= limit, (container["name"], resource)


def test_grace_period_outlasts_the_drain(manifests: list[Manifest]) -> None:
    """terminationGracePeriodSeconds exceeds OCTOLLM_SHUTDOWN_GRACE_S (default and configured)."""
    grace = max(
        default_shutdown_grace_s(),
        float(config_data(manifests)["OCTOLLM_SHUTDOWN_GRACE_S"]),
    )
    for deployment in of_kind(manifests, "Deployment"):
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_images_are_the_project_version(manifests: list[Manifest]) -> None:
    """Every container runs octollm-mesh tagged with the project's version, never :latest."""
    for deployment in of_kind(manifests, "Deployment"):
        for _, container in containers(deployment):
            assert container["image"] == image()


def test_arm_commands_name_reference_arms_on_their_grpc_port(manifests: list[Manifest]) -> None:
    """Arm pods run `arm NAME --listen 0.0.0.0:PORT` for a real arm and their declared port."""
    for deployment in arms(manifests):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert args[0] == "arm"
        assert args[1] in REFERENCE_ARMS
        assert deployment["metadata"]["name"] == f"arm-{args[1]}"
        assert args[args.index("--listen") + 1] == f"0.0.0.0:{grpc_port(container)}"


# --- orchestrator ------------------------------------------------------------------------------


def test_orchestrator_replicas_service_pdb_and_hpa(overlay: str, manifests: list[Manifest]) -> None:
    """Replicas per overlay; ClusterIP grpc Service, PDB and CPU HPA all target its pods."""
    deployment = orchestrator(manifests)
    labels = pod_labels(deployment)
    replicas = deployment["spec"]["replicas"]
    assert replicas == ORCHESTRATOR_REPLICAS[overlay] > 1
    assert labels_match(selector_labels(deployment["spec"]["selector"]), labels)

    service = named(manifests, "Service", "orchestrator")
    assert service["spec"]["type"] == "ClusterIP"
    assert labels_match(service["spec"]["selector"], labels)
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["appProtocol"]) == ("grpc", 50051, "grpc")
    assert port["targetPort"] in (
        "grpc",
        grpc_port(deployment["spec"]["template"]["spec"]["containers"][0]),
    )

    pdb = named(manifests, "PodDisruptionBudget", "orchestrator")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    pdb_selector = selector_labels(pdb["spec"]["selector"])
    assert labels_match(pdb_selector, labels)
    assert not any(labels_match(pdb_selector, pod_labels(arm)) for arm in arms(manifests))

    hpa = named(manifests, "HorizontalPodAutoscaler", "orchestrator")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        "orchestrator",
    )
    assert hpa["spec"]["minReplicas"] == replicas < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_orchestrator_env_comes_from_configmap_and_secret(manifests: list[Manifest]) -> None:
    """The orchestrator reads the whole ConfigMap and Secret, which exist in the overlay."""
    (container,) = orchestrator(manifests)["spec"]["template"]["spec"]["containers"]
    sources = {(k, v["name"]) for ref in container["envFrom"] for k, v in ref.items()}
    assert sources == {("configMapRef", "octollm-config"), ("secretRef", "octollm-secrets")}
    named(manifests, "ConfigMap", "octollm-config")
    named(manifests, "Secret", "octollm-secrets")


# --- arms and discovery ------------------------------------------------------------------------


def test_every_arm_has_a_headless_service_selecting_only_its_pods(
    manifests: list[Manifest],
) -> None:
    """Each arm Deployment has a headless grpc Service selecting its pods and no others."""
    deployments = of_kind(manifests, "Deployment")
    for deployment in arms(manifests):
        service = named(manifests, "Service", deployment["metadata"]["name"])
        assert service["spec"]["clusterIP"] == "None"
        assert not service["spec"].get("publishNotReadyAddresses", False)
        selected = [
            d for d in deployments if labels_match(service["spec"]["selector"], pod_labels(d))
        ]
        assert selected == [deployment]
        (port,) = service["spec"]["ports"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert (port["name"], port["appProtocol"]) == ("grpc", "grpc")
        assert port["port"] == grpc_port(container)


def test_arm_endpoints_resolve_every_arm_service_in_the_namespace(
    overlay: str, manifests: list[Manifest]
) -> None:
    """OCTOLLM_ARM_ENDPOINTS has one dns:/// FQDN per headless arm Service, on its port."""
    namespace = NAMESPACES[overlay]
    endpoints = Settings(
        arm_endpoints=config_data(manifests)["OCTOLLM_ARM_ENDPOINTS"]
    ).arm_endpoints
    expected = set()
    for deployment in arms(manifests):
        service = named(manifests, "Service", deployment["metadata"]["name"])
        fqdn = f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
        expected.add(f"{DNS_SCHEME}{fqdn}:{service['spec']['ports'][0]['port']}")
    assert set(endpoints) == expected
    for endpoint in endpoints:
        split_host_port(endpoint.removeprefix(DNS_SCHEME))


def test_network_policies_let_only_the_orchestrator_reach_arms(manifests: list[Manifest]) -> None:
    """Arm ingress: default deny, plus the orchestrator's pods on the arms' gRPC ports."""
    policies = of_kind(manifests, "NetworkPolicy")
    arm_pods = [pod_labels(d) for d in arms(manifests)]
    orchestrator_pods = pod_labels(orchestrator(manifests))
    arm_ports = {grpc_port(d["spec"]["template"]["spec"]["containers"][0]) for d in arms(manifests)}

    for policy in policies:
        selector = selector_labels(policy["spec"]["podSelector"])
        assert all(labels_match(selector, pod) for pod in arm_pods), policy["metadata"]["name"]
        assert not labels_match(selector, orchestrator_pods), "clients must reach the orchestrator"
        assert policy["spec"]["policyTypes"] == ["Ingress"]

    deny = [p for p in policies if not p["spec"].get("ingress")]
    assert deny, "no default-deny ingress policy for arms"
    allow = [p for p in policies if p["spec"].get("ingress")]
    assert allow, "no policy lets the orchestrator in"
    for policy in allow:
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, "peers are pods of this namespace only"
                source = selector_labels(peer["podSelector"])
                assert labels_match(source, orchestrator_pods)
                assert not any(labels_match(source, pod) for pod in arm_pods)
            assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {
                ("TCP", port) for port in arm_ports
            }


# --- configuration -----------------------------------------------------------------------------


def test_configmap_and_secret_hold_only_real_settings(manifests: list[Manifest]) -> None:
    """Every env key in the ConfigMap and Secret is an OCTOLLM_ setting (or an announced one)."""
    secret = named(manifests, "Secret", "octollm-secrets")
    keys = set(config_data(manifests)) | set(secret["stringData"])
    assert keys <= setting_names(), sorted(keys - setting_names())
    for deployment in of_kind(manifests, "Deployment"):
        for _, container in containers(deployment):
            for env in container.get("env", []):
                assert env["name"] in setting_names()
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in config_data(manifests)


def test_configmap_and_secret_load_into_settings(
    manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orchestrator's Settings accept the ConfigMap and Secret as its environment."""
    secret = named(manifests, "Secret", "octollm-secrets")
    for key, value in {**config_data(manifests), **secret["stringData"]}.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.listen == "0.0.0.0:50051"
    assert settings.arm_endpoints


def test_secrets_are_marked_placeholders(manifests: list[Manifest]) -> None:
    """Committed Secrets hold only clearly marked placeholder values."""
    for secret in of_kind(manifests, "Secret"):
        assert secret["metadata"]["annotations"]["octollm.io/placeholder"] == "true"
        assert "data" not in secret
        for key, value in secret["stringData"].items():
            assert "REPLACE-ME" in value, f"{secret['metadata']['name']}.{key} is not a placeholder"


# --- service meshes ----------------------------------------------------------------------------


def test_mesh_injection_lives_in_the_mesh_overlays_only(
    overlay: str, manifests: list[Manifest]
) -> None:
    """linkerd/istio overlays inject their proxy into every pod; base, dev and prod inject none."""
    for deployment in of_kind(manifests, "Deployment"):
        meta = deployment["spec"]["template"]["metadata"]
        marks = {**meta.get("labels", {}), **meta.get("annotations", {})}
        injected = {key: marks[key] for key in MESH_KEYS if key in marks}
        if overlay == "linkerd":
            assert injected == {"linkerd.io/inject": "enabled"}
        elif overlay == "istio":
            assert injected == {"sidecar.istio.io/inject": "true"}
            assert meta["labels"]["sidecar.istio.io/inject"] == "true"
        else:
            assert injected == {}
