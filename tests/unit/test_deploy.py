"""The deploy files, linted here where Docker and Kubernetes cannot run:
systemd units with ``systemd-analyze verify``, Kubernetes manifests against
the API schemas (``kubernetes-validate``, offline), the image definition with
a Dockerfile parser, and what ties them to the programs (options that exist,
grace periods that cover the agent's, names that match)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def manifests() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def container(doc: dict) -> dict:
    [only] = doc["spec"]["template"]["spec"]["containers"]
    return only


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_units_verify(tmp_path):
    units = sorted((DEPLOY / "systemd").glob("queuectl-*"))
    assert {u.name for u in units} >= {"queuectl-broker.service", "queuectl-agent.service",
                                       "queuectl-backup.service", "queuectl-backup.timer"}
    for unit in units:  # the programs as this venv installed them
        (tmp_path / unit.name).write_text(unit.read_text().replace("/usr/local/bin/", f"{BIN}/"))
    result = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in
                                                                  tmp_path.iterdir())],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_the_agent_unit_stops_gracefully_within_its_timeout():
    unit = (DEPLOY / "systemd" / "queuectl-agent.service").read_text()
    grace_match = re.search(r"--grace (\d+)", unit)
    timeout_match = re.search(r"^TimeoutStopSec=(\d+)", unit, re.M)
    assert grace_match is not None and timeout_match is not None, unit
    grace, timeout = float(grace_match.group(1)), float(timeout_match.group(1))
    assert "KillMode=mixed" in unit and "Restart=on-failure" in unit
    assert timeout >= grace + 5 + 10  # grace + kill_grace_sec + delivering results


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_match_the_api_schemas(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked below
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_kubernetes_validation_rejects_a_broken_manifest():
    broker = manifests()[("StatefulSet", "queuectl-broker")]
    broken = {**broker, "spec": {**broker["spec"], "replicas": "one"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30", strict=True)


def test_the_kubernetes_pieces_fit_together():
    found = manifests()
    broker = found[("StatefulSet", "queuectl-broker")]
    service = found[("Service", "queuectl-broker")]
    agents = found[("Deployment", "queuectl-agent")]
    keda = found[("ScaledObject", "queuectl-agent")]
    assert broker["spec"]["replicas"] == 1
    assert broker["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {
        m["name"] for m in container(broker)["volumeMounts"]}
    assert service["spec"]["selector"] == broker["spec"]["template"]["metadata"]["labels"]
    # Agents reach that Service, with keys from a Secret that exists.
    args = container(agents)["args"]
    assert option(args, "--broker") == "tcp://queuectl-broker:5555"
    secrets = {name for kind, name in found if kind == "Secret"}
    for workload in (broker, agents, found[("Deployment", "queuectl-dashboard")]):
        for volume in workload["spec"]["template"]["spec"]["volumes"]:
            assert volume["secret"]["secretName"] in secrets
    # The grace period covers the agent's --grace, kill_grace_sec and delivery.
    grace = float(option(args, "--grace"))
    assert agents["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= grace + 15
    # Labels from the pod spec, through the Downward API.
    env = {e["name"]: e for e in container(agents)["env"]}
    assert "pool=$(QUEUECTL_POOL)" in args
    assert "queuectl.io/pool" in env["QUEUECTL_POOL"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "queuectl.io/pool" in agents["spec"]["template"]["metadata"]["labels"]
    # The broker's allow-list has one entry per role.
    paths = {item["path"] for volume in broker["spec"]["template"]["spec"]["volumes"]
             if "secret" in volume for item in volume["secret"]["items"]}
    assert {"broker.key", "broker.key_secret"} <= paths
    assert {p.split("/")[1] for p in paths if p.startswith("allowed/")} == {
        "admin", "agent", "reader"}
    # KEDA scales that Deployment on a metric the stats page exports.
    assert keda["spec"]["scaleTargetRef"]["name"] == agents["metadata"]["name"]
    [trigger] = keda["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    named = re.search(r"queuectl_\w+", trigger["metadata"]["query"])
    assert named is not None, trigger
    metric = named.group(0)
    exported = (ROOT / "queuectl" / "dashboard" / "metrics.py").read_text()
    assert f'"{metric}"' in exported


def test_programs_in_the_deploy_files_accept_their_options():
    """Every broker and agent command line in the deploy files parses."""
    from queuectl.broker.main import parse_args

    found = manifests()
    broker_args = container(found[("StatefulSet", "queuectl-broker")])["args"]
    assert broker_args[0] == "queuectl-broker"
    parse_args(broker_args[1:])
    compose = yaml.safe_load((DEPLOY / "container" / "compose.yaml").read_text())
    parse_args(compose["services"]["broker"]["command"][1:])
    for args in (container(found[("Deployment", "queuectl-agent")])["args"],
                 compose["services"]["agent"]["command"]):
        assert args[0] == "queuectl-agent"
        result = subprocess.run([str(BIN / "queuectl-agent"), *args[1:], "--help"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


def test_the_image_definition_parses_and_runs_as_a_user():
    parser = DockerfileParser(path=str(DEPLOY / "container" / "Dockerfile"))
    instructions = [i["instruction"] for i in parser.structure]
    assert parser.baseimage.startswith("python:3.11")
    users = [i["value"] for i in parser.structure if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert instructions.index("USER") < instructions.index("CMD")
    for step in parser.structure:  # everything it copies exists in the repository
        if step["instruction"] == "COPY":
            *sources, _ = step["value"].split()
            for source in sources:
                assert (ROOT / source).exists(), source
    assert '"/usr/bin/tini", "--"' in parser.content
    compose = yaml.safe_load((DEPLOY / "container" / "compose.yaml").read_text())
    assert {"broker", "agent", "dashboard"} <= set(compose["services"])
    build = compose["x-image"]["build"]
    assert (DEPLOY / "container" / build["context"] / build["dockerfile"]).resolve() == \
        (DEPLOY / "container" / "Dockerfile").resolve()
