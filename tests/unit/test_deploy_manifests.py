"""deploy/k8s, rendered by the real kustomize and checked offline: every object against the
Kubernetes or CRD schemas, and the promises the manifests make to each other and to the code
(commands and variables that exist, partitions that bound the workers, probes on the ports that
serve them, pods locked down)."""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

import pytest

from shared.cli import _parser
from shared.topics import Topics
from tests.support.manifests import (
    K8S,
    OVERLAYS,
    ROOT,
    Manifest,
    render,
    validation_errors,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.unit

SETTINGS_SOURCE = (ROOT / "shared" / "settings.py").read_text()
WORKLOAD_KINDS = {"Deployment", "Job"}


def _of(objects: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    (found,) = [o for o in _of(objects, kind) if o["metadata"]["name"] == name]
    return found


def _config(objects: tuple[Manifest, ...]) -> dict[str, str]:
    data: dict[str, str] = _one(objects, "ConfigMap", "paynotify")["data"]
    return data


def _pod_specs(objects: tuple[Manifest, ...]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for o in objects:
        if o["kind"] in WORKLOAD_KINDS:
            yield o, o["spec"]["template"]["spec"]


def _containers(objects: tuple[Manifest, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o, pod in _pod_specs(objects):
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f"{o['kind']}/{o['metadata']['name']}/{c['name']}", c


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_accepted_by_its_schema(overlay: str) -> None:
    """Built-in kinds against Kubernetes' schemas (oldest and newest supported), custom
    resources against the CRDs in deploy/schemas; no object is left unchecked."""
    objects = render(overlay)
    assert objects, overlay
    problems = {
        f"{o['kind']}/{o['metadata']['name']}": errors
        for o in objects
        if (errors := validation_errors(o))
    }
    assert problems == {}


def test_the_overlays_hold_what_the_issue_asks_for() -> None:
    """The production overlay: ingress Deployment, Service, HPA on CPU, PDB; workers under a
    KEDA ScaledObject; the sweeper; the topics Job; the NetworkPolicies; and with Strimzi, the
    five topics as KafkaTopics."""
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render("overlays/production")}
    assert {
        ("Deployment", "paynotify-ingress"),
        ("Service", "paynotify-ingress"),
        ("HorizontalPodAutoscaler", "paynotify-ingress"),
        ("PodDisruptionBudget", "paynotify-ingress"),
        ("Deployment", "paynotify-worker"),
        ("ScaledObject", "paynotify-worker"),
        ("Deployment", "paynotify-sweeper"),
        ("Job", "paynotify-topics"),
        ("ConfigMap", "paynotify"),
        ("NetworkPolicy", "paynotify-ingress-public"),
        ("NetworkPolicy", "paynotify-metrics-from-monitoring"),
    } <= kinds
    hpa = _one(render("overlays/production"), "HorizontalPodAutoscaler", "paynotify-ingress")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    strimzi = render("overlays/production-strimzi")
    assert len(_of(strimzi, "KafkaTopic")) == len(Topics().all)
    assert not (K8S / "paynotify.yaml").exists()  # the flat file is gone, not left to drift


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_scale_up_to_the_partition_count_on_the_groups_lag(overlay: str) -> None:
    """maxReplicaCount is PAYNOTIFY_TOPIC_PARTITIONS; the trigger reads the workers' group and
    bootstrap servers from their environment and watches this deployment's callbacks topic."""
    objects = render(overlay)
    config = _config(objects)
    scaled = _one(objects, "ScaledObject", "paynotify-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "paynotify-worker"
    _one(objects, "Deployment", "paynotify-worker")
    assert scaled["maxReplicaCount"] == int(config["PAYNOTIFY_TOPIC_PARTITIONS"])
    (trigger,) = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["topic"] == Topics(config.get("PAYNOTIFY_TOPIC_PREFIX", "")).callbacks
    assert meta["bootstrapServersFromEnv"] == "KAFKA_BOOTSTRAP_SERVERS"
    assert meta["bootstrapServersFromEnv"] in config
    assert meta["consumerGroupFromEnv"] in config
    # The workers read auto_offset_reset="earliest" (workers/__main__.py): the lag must agree.
    assert meta["offsetResetPolicy"] == "earliest"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics_match_what_topics_ensure_creates(overlay: str) -> None:
    """Same names (the prefix included), partitions, replicas and min.insync.replicas as
    `paynotify topics ensure` with this ConfigMap."""
    objects = render(overlay)
    topics = _of(objects, "KafkaTopic")
    if not topics:
        return  # this overlay leaves the topics to the Job alone
    config = _config(objects)
    replication = int(config["PAYNOTIFY_TOPIC_REPLICATION"])
    assert sorted(t["spec"]["topicName"] for t in topics) == sorted(
        Topics(config.get("PAYNOTIFY_TOPIC_PREFIX", "")).all
    )
    for t in topics:
        assert t["spec"]["partitions"] == int(config["PAYNOTIFY_TOPIC_PARTITIONS"])
        assert t["spec"]["replicas"] == replication
        assert t["spec"]["config"]["min.insync.replicas"] == (2 if replication >= 3 else 1)
        assert "strimzi.io/cluster" in t["metadata"]["labels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_commands_flags_and_variables_are_ones_paynotify_has(overlay: str) -> None:
    """Each container's args parse with `paynotify`'s own argument parser, and every variable
    it is given is one shared/settings.py reads."""
    objects = render(overlay)
    parser = _parser()
    for where, c in _containers(objects):
        assert c["image"].startswith("paynotify") or "/paynotify" in c["image"], where
        parser.parse_args(c["args"])  # exits (fails the test) on an unknown command or flag
        for env in c.get("env", []):
            assert f'"{env["name"]}"' in SETTINGS_SOURCE, (where, env["name"])
        for source in c.get("envFrom", []):
            assert source["configMapRef"]["name"] == "paynotify", where
    for name in _config(objects):
        assert f'"{name}"' in SETTINGS_SOURCE, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_the_port_that_serves_them(overlay: str) -> None:
    """Every long-running process has readiness and liveness probes on /readyz and /healthz,
    on the port its own flag or variable opens (listening on all addresses), and Prometheus'
    annotations name that same port."""
    objects = render(overlay)
    for o in _of(objects, "Deployment"):
        pod = o["spec"]["template"]
        (c,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", o["metadata"]["name"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", o["metadata"]["name"]
        port = ports[c["readinessProbe"]["httpGet"]["port"]]
        assert ports[c["livenessProbe"]["httpGet"]["port"]] == port
        args = _parser().parse_args(c["args"])
        if args.command == "ingress":
            assert (args.admin_port, args.host) == (port, "0.0.0.0")  # noqa: S104
            assert args.port != port  # the notification port serves no probe
        else:
            env = {e["name"]: e["value"] for e in c["env"]}
            assert int(env["PAYNOTIFY_METRICS_PORT"]) == port
            assert env["PAYNOTIFY_METRICS_HOST"] == "0.0.0.0"  # noqa: S104
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down_and_sized(overlay: str) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, every capability dropped,
    the runtime's seccomp profile; CPU and memory requests and limits; a pinned image."""
    objects = render(overlay)
    for o, pod in _pod_specs(objects):
        name = o["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
    for where, c in _containers(objects):
        security = c["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        for bound in ("requests", "limits"):
            assert set(c["resources"][bound]) == {"cpu", "memory"}, (where, bound)
        image = c["image"]
        assert re.search(r":[\w.-]+$", image), where
        assert not image.endswith(":latest"), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_notification_port_is_open_to_the_outside(overlay: str) -> None:
    """Every pod is selected by a NetworkPolicy (so isolated); the only rule without a source
    admits the ingress's notification port, which is the port its Service sends to; the
    metrics/admin port is admitted from the monitoring namespace only."""
    objects = render(overlay)
    policies = _of(objects, "NetworkPolicy")
    for o, _ in _pod_specs(objects):
        labels = o["spec"]["template"]["metadata"]["labels"]
        assert any(_selects(p["spec"]["podSelector"]["matchLabels"], labels) for p in policies), o[
            "metadata"
        ]["name"]
    ingress = _one(objects, "Deployment", "paynotify-ingress")
    (container,) = ingress["spec"]["template"]["spec"]["containers"]
    public_port = _parser().parse_args(container["args"]).port
    service = _one(objects, "Service", "paynotify-ingress")
    (service_port,) = service["spec"]["ports"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[service_port["targetPort"]] == public_port
    assert _selects(service["spec"]["selector"], ingress["spec"]["template"]["metadata"]["labels"])
    for p in policies:
        assert p["spec"]["policyTypes"] == ["Ingress"]
        for rule in p["spec"]["ingress"]:
            ports = [port["port"] for port in rule["ports"]]
            if "from" not in rule:  # from anywhere
                assert p["spec"]["podSelector"]["matchLabels"] == {
                    "app.kubernetes.io/name": "paynotify-ingress"
                }
                assert ports == [public_port]
            else:
                assert rule["from"] == [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                        }
                    }
                ]
                assert ports == [9090]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_and_budgets_point_at_real_deployments(overlay: str) -> None:
    """The HPA's target exists and asks CPU requests it can measure against; each PDB selects
    a Deployment's pods; autoscaled Deployments leave `replicas` to their autoscaler."""
    objects = render(overlay)
    deployments = {o["metadata"]["name"]: o for o in _of(objects, "Deployment")}
    for hpa in _of(objects, "HorizontalPodAutoscaler"):
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"]
        (c,) = target["spec"]["template"]["spec"]["containers"]
        assert "cpu" in c["resources"]["requests"]
    for scaled in _of(objects, "ScaledObject"):
        assert "replicas" not in deployments[scaled["spec"]["scaleTargetRef"]["name"]]["spec"]
    for pdb in _of(objects, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(
            _selects(selector, d["spec"]["template"]["metadata"]["labels"])
            for d in deployments.values()
        ), pdb["metadata"]["name"]


# The validator itself: each broken object below must be refused, or the tests above prove
# nothing.


def _worker(overlay: str = "overlays/production") -> Manifest:
    return copy.deepcopy(_one(render(overlay), "Deployment", "paynotify-worker"))


def _scaled(overlay: str = "overlays/production") -> Manifest:
    return copy.deepcopy(_one(render(overlay), "ScaledObject", "paynotify-worker"))


def _topic() -> Manifest:
    return copy.deepcopy(_of(render("overlays/production-strimzi"), "KafkaTopic")[0])


def test_the_untouched_objects_are_accepted() -> None:
    """The controls: the objects the broken ones below are made from pass."""
    assert validation_errors(_worker()) == []
    assert validation_errors(_scaled()) == []
    assert validation_errors(_topic()) == []


def test_a_misspelt_field_of_a_builtin_kind_is_refused() -> None:
    """`readinessprobe` for `readinessProbe`: strict validation, as `kubectl apply` does."""
    worker = _worker()
    container = worker["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")
    assert any("readinessprobe" in e for e in validation_errors(worker))


def test_a_wrong_type_in_a_builtin_kind_is_refused() -> None:
    worker = _worker()
    worker["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9090"
    assert any("'9090' is not of type 'integer'" in e for e in validation_errors(worker))


def test_a_kind_unknown_to_kubernetes_is_refused() -> None:
    worker = _worker()
    worker["apiVersion"] = "apps/v1beta1"  # removed in Kubernetes 1.16
    assert any("has no apps/v1beta1 Deployment" in e for e in validation_errors(worker))


def test_broken_scaled_objects_are_refused() -> None:
    """A wrong type and an unknown field (CRD schema), min above max (the CRD's CEL rule) and
    a misspelt kafka trigger key (which KEDA would silently ignore)."""
    wrong_type = _scaled()
    wrong_type["spec"]["maxReplicaCount"] = "twelve"
    unknown = _scaled()
    unknown["spec"]["maxReplicas"] = 12
    inverted = _scaled()
    inverted["spec"]["minReplicaCount"] = inverted["spec"]["maxReplicaCount"] + 1
    misspelt = _scaled()
    misspelt["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "200"
    for broken, why in (
        (wrong_type, "'twelve' is not of type 'integer'"),
        (unknown, "'maxReplicas' was unexpected"),
        (inverted, "minReplicaCount must be less than or equal to maxReplicaCount"),
        (misspelt, "'lagTreshold' was unexpected"),
    ):
        assert any(why in e for e in validation_errors(broken)), why


def test_broken_kafka_topics_are_refused() -> None:
    """Zero partitions (the CRD's minimum is 1), an unknown field, a name the API refuses, and
    an API version Strimzi no longer serves."""
    zero = _topic()
    zero["spec"]["partitions"] = 0
    unknown = _topic()
    unknown["spec"]["partition"] = 12
    bad_name = _topic()
    bad_name["metadata"]["name"] = "Paynotify_Callbacks"
    old = _topic()
    old["apiVersion"] = "kafka.strimzi.io/v1beta1"
    for broken, why in (
        (zero, "0 is less than the minimum of 1"),
        (unknown, "'partition' was unexpected"),
        (bad_name, "is not a DNS-1123 subdomain"),
        (old, "serves no version v1beta1"),
    ):
        assert any(why in e for e in validation_errors(broken)), why
