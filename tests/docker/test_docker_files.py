"""Static checks of docker/ (no Docker engine needed): compose.yaml, the Dockerfile and its ignore file.

``docker compose config`` runs when a Compose binary exists (``docker-compose`` v1, e.g. Debian's
``apt-get install -y docker-compose``, or the v2 ``docker compose`` plugin). Without one the test is
skipped with the reason, except when ``CI`` is set: then it fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"

SERVICES = {"postgres", "ray-head", "ray-gpu-worker", "ray-cpu-worker", "dashboard", "study", "server"}
RAY_NODES = {"ray-head", "ray-gpu-worker", "ray-cpu-worker", "study", "server"}  # every process that joins Ray
DB_CLIENTS = {"study", "dashboard", "server"}  # the only services that may know the database URL


# -- compose.yaml ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def _port_host_ip(port: Any) -> str | None:
    """Host address a port is published on: short syntax ``IP:HOST:CONTAINER`` or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip")
    parts = re.sub(r"\$\{[^}]*\}", "VAR", str(port)).split(":")  # "${X:-5432}" holds a colon
    return parts[0] if len(parts) == 3 else None  # "8080:8080" and "8080" publish on every interface


def _assert_loopback_only(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        assert svc.get("network_mode") != "host", f"{name}: host networking bypasses the 127.0.0.1 binding"
        for port in svc.get("ports") or []:
            assert _port_host_ip(port) == "127.0.0.1", f"{name}: port {port!r} is not bound to 127.0.0.1"


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_every_published_port_is_loopback(compose: dict[str, Any]) -> None:
    _assert_loopback_only(compose["services"])


def test_postgres(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert "test" in pg["healthcheck"]
    assert _env(pg)["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:-"), "password must come from env"
    named = [v.split(":", 1)[0] for v in pg["volumes"] if isinstance(v, str) and not v.startswith((".", "/"))]
    assert named and all(n in (compose.get("volumes") or {}) for n in named), "data needs a named volume"


def test_storage_url_only_where_needed(compose: dict[str, Any]) -> None:
    default_pw = _env(compose["services"]["postgres"])["POSTGRES_PASSWORD"]
    expected = f"postgresql://hpsearch:{default_pw}@postgres:5432/hpsearch"  # same default both places
    for name, svc in compose["services"].items():
        env = _env(svc)
        if name in DB_CLIENTS:
            assert env.get("HPSEARCH_STORAGE") == expected, f"{name}: HPSEARCH_STORAGE must be built from env"
        elif name != "postgres":  # Ray nodes run user code: no database credentials there
            assert not any("postgresql://" in v or "POSTGRES_PASSWORD" in v for v in env.values()), name
    text = COMPOSE.read_text(encoding="utf-8")
    urls = re.findall(r"postgres(?:ql)?://\S+", text)
    assert urls and all("${POSTGRES_PASSWORD:-" in u for u in urls), "no hard-coded database credentials"


def test_ray_token_auth(compose: dict[str, Any]) -> None:
    for name in RAY_NODES:
        env = _env(compose["services"][name])
        assert env.get("RAY_AUTH_MODE") == "token", f"{name}: RAY_AUTH_MODE=token must be set explicitly"
        token = env.get("RAY_AUTH_TOKEN", "")
        assert token.startswith("${RAY_AUTH_TOKEN:?"), f"{name}: token required, without a default"


def test_ray_head(compose: dict[str, Any]) -> None:
    head = compose["services"]["ray-head"]
    cmd = _command(head)
    for part in ("ray start --head", "--block", "--port=6379", "--dashboard-host=0.0.0.0"):
        assert part in cmd
    assert {str(p).rsplit(":", 1)[-1] for p in head["ports"]} == {"6379", "8265"}
    assert "test" in head["healthcheck"]


def test_server(compose: dict[str, Any]) -> None:
    srv = compose["services"]["server"]
    cmd = _command(srv)
    assert "hpsearch serve" in cmd and "--address ray-head:6379" in cmd and "--num-cpus=0" in cmd
    assert [str(p) for p in srv["ports"]] == ["127.0.0.1:8000:8000"]
    assert srv["restart"] == "unless-stopped"  # a reboot resumes its running studies


def test_gpu_worker(compose: dict[str, Any]) -> None:
    w = compose["services"]["ray-gpu-worker"]
    assert "ray start --address=ray-head:6379" in _command(w) and "--block" in _command(w)
    devices = w["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    # --scale ray-gpu-worker=N needs no fixed container name and no host port.
    assert "container_name" not in w and not w.get("ports")
    assert not w.get("profiles"), "the GPU worker belongs to the default set"


def test_cpu_worker_is_a_profile(compose: dict[str, Any]) -> None:
    w = compose["services"]["ray-cpu-worker"]
    assert w.get("profiles") and "ray start --address=ray-head:6379" in _command(w)
    assert "deploy" not in w


def test_dashboard(compose: dict[str, Any]) -> None:
    d = compose["services"]["dashboard"]
    assert "hpsearch dashboard --host 0.0.0.0 --port 8080" in _command(d)
    assert d["ports"] == ["127.0.0.1:8080:8080"]


def test_study_job(compose: dict[str, Any]) -> None:
    s = compose["services"]["study"]
    assert s["profiles"] == ["job"]
    assert s["restart"] == "no"
    assert "../examples:/studies:ro" in s["volumes"]
    cmd = _command(s)
    # A Ray driver needs a local raylet: the job joins as a resource-less node before it drives.
    join = "ray start --address=ray-head:6379 --num-cpus=0 --num-gpus=0"
    assert cmd.index(join) < cmd.index("hpsearch run")
    assert "--address ray-head:6379" in cmd
    default = re.search(r"/studies/\$\{STUDY_FILE:-([^}]+)\}", cmd)
    assert default and (REPO / "examples" / default.group(1)).is_file(), "default study file must exist"


def test_build_points_at_the_dockerfile(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if "build" in svc:
            b = svc["build"]
            assert (DOCKER / b["context"]).resolve() == REPO, f"{name}: build context must be the repo root"
            assert (REPO / b["dockerfile"]).resolve() == DOCKERFILE
            assert svc["image"].startswith("hpsearch:")


# -- Dockerfile --------------------------------------------------------------------------------------
def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        if buf.strip():
            instr, _, args = buf.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def _copy_sources(args: str) -> list[str] | None:
    """Sources of a COPY/ADD from the build context; None when it copies from a stage or image."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    if any(f.startswith("--from=") for f in flags):
        return None
    paths = [w for w in words if not w.startswith("--")]
    assert len(paths) >= 2, f"COPY/ADD needs a source and a destination: {args}"
    return [p for p in paths[:-1] if not re.match(r"^[a-z]+://", p)]


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line of the ignore file, with Docker's pattern semantics."""
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rx, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                rx, i = rx + pattern[i : end + 1], end + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(f"^{rx}$")))
    return rules


def _ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves ``rel`` out (a pattern matches the path or a parent; last wins)."""
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE)


def test_copy_sources_exist_and_reach_the_context(dockerfile: list[tuple[str, str]]) -> None:
    rules = _ignore_rules()
    copied = []
    for instr, args in dockerfile:
        if instr not in ("COPY", "ADD"):
            continue
        for src in _copy_sources(args) or []:
            matches = list(REPO.glob(src.rstrip("/"))) if any(c in src for c in "*?[") else [REPO / src]
            assert matches and all(m.exists() for m in matches), f"{instr} {src}: not in the repository"
            for m in matches:
                files = [m] if m.is_file() else [
                    f for f in m.rglob("*")
                    if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
                ]
                assert files, f"{instr} {src}: nothing to copy"
                for f in files:
                    rel = f.relative_to(REPO).as_posix()
                    assert not _ignored(rel, rules), f"{rel} is excluded by {DOCKERIGNORE.name}"
            copied.append(src.rstrip("/"))
    assert {"pyproject.toml", "README.md", "search", "trials", "storage"} <= set(copied)
    # What must never enter the image.
    for secret in (".venv/bin/python", ".git/HEAD", "hpsearch.db", "docker/.env", ".env"):
        assert _ignored(secret, rules), f"{secret} would be sent to the Docker daemon"


def test_dockerfile_variants(dockerfile: list[tuple[str, str]]) -> None:
    first_from = next(i for i, (ins, _) in enumerate(dockerfile) if ins == "FROM")
    global_args = dict(a.split("=", 1) for ins, a in dockerfile[:first_from] if ins == "ARG" and "=" in a)
    assert global_args.get("DEVICE") == "cpu"
    stages: dict[str, str] = {}
    final = ""
    for ins, args in dockerfile:
        if ins == "FROM":
            words = args.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            if len(words) == 3 and words[1].upper() == "AS":
                stages[words[2]] = image
            final = words[0]
    assert final == "base-${DEVICE}", "the last stage must pick its base from DEVICE"
    assert re.match(r"^python:3\.11-slim", stages["base-cpu"])
    assert re.match(r"^(nvidia/cuda:[^ ]*-runtime|pytorch/pytorch:[^ ]*-runtime)", stages["base-cuda"])
    runs = [a for ins, a in dockerfile if ins == "RUN"]
    assert any("--index-url https://download.pytorch.org/whl/cpu" in r for r in runs)


def test_dockerfile_runtime_settings(dockerfile: list[tuple[str, str]]) -> None:
    instrs = [ins for ins, _ in dockerfile]
    assert "ENTRYPOINT" not in instrs, "one image runs ray start, hpsearch run and hpsearch dashboard"
    env = " ".join(a for ins, a in dockerfile if ins == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    users = [a for ins, a in dockerfile if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"


# -- docker compose config -------------------------------------------------------------------------
def _compose_binary() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def _compose_config(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    binary = _compose_binary()
    if binary is None:
        reason = "no docker-compose and no `docker compose` plugin (apt-get install -y docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    empty_env_file = tmp_path / "empty.env"  # ignore any docker/.env on this machine
    empty_env_file.write_text("")
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "DOCKER_CONFIG") if k in os.environ}
    return subprocess.run(
        [*binary, "--env-file", str(empty_env_file), "-f", str(COMPOSE),
         "--profile", "job", "--profile", "cpu", "config", *extra],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**base, **env},
    )


@pytest.mark.slow
def test_compose_config_accepts_the_file(tmp_path: Path) -> None:
    r = _compose_config(tmp_path, {"RAY_AUTH_TOKEN": "test-token"}, "-q")
    assert r.returncode == 0, r.stderr + r.stdout
    # The interpolated result still binds every port to 127.0.0.1 (also with a custom postgres port).
    r = _compose_config(tmp_path, {"RAY_AUTH_TOKEN": "test-token", "POSTGRES_HOST_PORT": "15432"})
    assert r.returncode == 0, r.stderr + r.stdout
    rendered = yaml.safe_load(r.stdout)
    assert set(rendered["services"]) == SERVICES
    _assert_loopback_only(rendered["services"])


@pytest.mark.slow
def test_compose_refuses_to_start_without_a_ray_token(tmp_path: Path) -> None:
    r = _compose_config(tmp_path, {}, "-q")
    assert r.returncode != 0 and "RAY_AUTH_TOKEN" in r.stderr + r.stdout
