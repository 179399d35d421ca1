"""docker-compose.yml describes the production stack from the one Dockerfile, and every command it runs
exists in the image's entry points. (No Docker engine runs here, so the file is checked, not started.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from service.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_api_worker_postgres_redis() -> None:
    services = load_compose()["services"]
    assert {"api", "worker", "postgres", "redis"} <= set(services)


def test_worker_reserves_a_gpu() -> None:
    worker = load_compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)


def test_app_services_build_from_the_dockerfile_and_run_real_commands() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    parser = build_parser()
    assert (ROOT / "Dockerfile").exists()
    for name, svc in load_compose()["services"].items():
        if "image" in svc and "build" not in svc:
            continue  # postgres, redis: upstream images
        assert svc["build"] == ".", name
        command = svc["command"]
        assert command[0] in scripts, f"{name}: {command[0]} is not an entry point"
        parser.parse_args(command[1:])  # exits (SystemExit) if the sub-command does not exist


def test_a_cpu_host_has_a_worker_without_a_gpu_reservation_behind_a_profile() -> None:
    """The GPU worker cannot start on a host without GPUs (a probe): `--profile cpu` runs this one."""
    cpu = load_compose()["services"]["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert cpu["command"] == ["unlearn", "worker"] and cpu["environment"]["UNLEARN_DEVICE"] == "cpu"
    assert cpu["restart"] == "unless-stopped"  # from the shared anchor


def test_app_services_point_at_postgres_and_redis() -> None:
    for name in ("api", "worker", "worker-cpu"):
        env = load_compose()["services"][name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql"), name
        assert env["BROKER_URL"].startswith("redis://"), name


def test_long_running_services_are_restarted_when_they_die() -> None:
    services = load_compose()["services"]
    for name in ("api", "worker", "beat"):
        assert services[name]["restart"] == "unless-stopped", name
    assert services["migrate"]["restart"] == "no"  # a one-shot
