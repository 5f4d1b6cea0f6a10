"""The cluster configs parse, agree with each other and with the code, and name real entry points.

- every YAML under cluster/ parses; the AWS launcher config passes the installed Ray's own schema;
- the KubeRay manifests have the shape docs/CLUSTER.md promises (CPU and GPU worker groups,
  RayJobs for ingest, train and score with entrypoint, runtimeEnvYAML, shutdownAfterJobFinishes,
  resources), credentials from IAM roles only, the Ray version of the image everywhere, Ray's
  token authentication on;
- every `python …jobs/X.py ARGS` in cluster/ and docs/CLUSTER.md resolves to a file in jobs/
  that calls a command of vadray.cli.COMMANDS, and ARGS parse with that command's real parser.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from vadray.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
DOCS = [REPO / "docs" / "CLUSTER.md"]
JOB_CALL = re.compile(r"python3?\s+(\S*jobs/([\w-]+)\.py)")
SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "2>&1", "&"}


def _yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kuberay(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in _yaml_files() for d in _docs(p)
            if d.get("apiVersion") == "ray.io/v1" and d.get("kind") == kind]


def _dockerfile_workdir() -> str:
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M)
    assert workdirs, "cluster/Dockerfile sets no WORKDIR"
    return workdirs[-1]


def _job_command(script: Path) -> str:
    """The vadray command a jobs/X.py hands its arguments to: main(["score", *sys.argv[1:]])."""
    tree = ast.parse(script.read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "main"
                and node.args and isinstance(node.args[0], ast.List) and node.args[0].elts
                and isinstance(node.args[0].elts[0], ast.Constant)):
            return node.args[0].elts[0].value
    raise AssertionError(f"{script.relative_to(REPO)} does not call vadray.cli.main([COMMAND, …])")


def _code_block_commands(markdown: str) -> list[str]:
    """Shell lines of the fenced code blocks, backslash continuations joined."""
    lines, block, current = [], False, ""
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            block, current = not block, ""
            continue
        if not block:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


def _job_invocations() -> list[tuple[str, str, str, list[str] | None]]:
    """(where, script path as written, job name, arguments or None when not parseable as shell)."""
    found = []
    for path in [*_yaml_files(), CLUSTER / "Dockerfile", *DOCS]:
        text = path.read_text()
        where = str(path.relative_to(REPO))
        if path.suffix == ".md":
            sources = _code_block_commands(text)
        elif path.suffix in (".yaml", ".yml"):
            sources = [d["spec"]["entrypoint"] for d in _docs(path)
                       if d.get("kind") == "RayJob"]
            # comments and other strings: the script must exist, arguments are not checked
            found += [(where, m.group(1), m.group(2), None) for m in JOB_CALL.finditer(text)]
        else:
            found += [(where, m.group(1), m.group(2), None) for m in JOB_CALL.finditer(text)]
            continue
        for source in sources:
            match = JOB_CALL.search(source)
            if not match:
                continue
            tokens = shlex.split(source[match.end():], comments=True)
            args = []
            for token in tokens:
                if token in SHELL_STOP:
                    break
                args.append(token)
            found.append((where, match.group(1), match.group(2), args))
    return found


def test_every_yaml_parses():
    files = _yaml_files()
    assert files, "no YAML under cluster/"
    for path in files:
        docs = _docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_aws_launcher_config_passes_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    configs = [p for p in _yaml_files() if "available_node_types" in (_docs(p) or [{}])[0]]
    assert configs, "no Ray cluster-launcher config under cluster/"
    for path in configs:
        config = _docs(path)[0]
        jsonschema.validate(config, schema)
        assert config["provider"]["type"] == "aws"
        types = config["available_node_types"]
        head = types[config["head_node_type"]]
        assert head["resources"].get("CPU") == 0, "the head should run drivers only"
        workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
        instance = {name: t["node_config"]["InstanceType"] for name, t in workers.items()}
        assert any(i.split(".")[0][0] in "gp" for i in instance.values()), f"no GPU worker type: {instance}"
        assert any(i.split(".")[0][0] not in "gp" for i in instance.values()), f"no CPU worker type: {instance}"
        for name, t in types.items():  # S3 credentials come from instance profiles, never keys
            assert "Arn" in t["node_config"].get("IamInstanceProfile", {}), f"{name} has no instance profile"
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|AWS_SECRET_ACCESS_KEY:", text)


def _pod_specs(cluster_spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", cluster_spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in cluster_spec.get("workerGroupSpecs", [])]
    return [(name, g["template"]["spec"]) for name, g in groups]


def _check_cluster_spec(where: str, spec: dict) -> dict[str, bool]:
    """Common checks of a RayCluster spec; returns {worker group: has a GPU}."""
    assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion {spec['rayVersion']} != {ray.__version__}"
    assert "rayStartParams" in spec["headGroupSpec"], where
    # anyone who reaches the Jobs API runs code with the cluster's S3 role: token auth on
    assert (spec.get("authOptions") or {}).get("mode") == "token", f"{where}: no Ray token authentication"
    gpu = {}
    accounts = {d["metadata"]["name"] for d in yaml.safe_load_all((CLUSTER / "kuberay" / "service-account.yaml")
                                                               .read_text()) if d and d["kind"] == "ServiceAccount"}
    for name, pod in _pod_specs(spec):
        # KubeRay binds the autoscaler's Role (patch pods and RayClusters) to the head's account
        # only: workers run job code, so they get an account with the S3 role and nothing else
        want = "vadray" if name == "head" else "vadray-worker"
        assert pod.get("serviceAccountName") == want and want in accounts, f"{where}/{name}: runs as " \
            f"{pod.get('serviceAccountName')!r}, not the IRSA service account {want!r}"
        assert not any(v.get("name") == "shm" for v in pod.get("volumes", [])), \
            f"{where}/{name}: KubeRay mounts /dev/shm sized to the memory limit itself; a smaller one " \
            "shrinks Ray's object store"
        for container in pod["containers"]:
            assert container["image"].endswith("vadray:0.1.0"), f"{where}/{name}: image {container['image']}"
            resources = container.get("resources", {})
            assert resources.get("limits") and resources.get("requests"), f"{where}/{name}: no resources"
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, f"{where}/{name}: keys in a manifest"
            if name != "head":
                gpu[name] = "nvidia.com/gpu" in resources["limits"]
    return gpu


def test_kuberay_cluster_has_cpu_decode_and_gpu_groups():
    clusters = _kuberay("RayCluster")
    assert clusters, "no RayCluster manifest"
    for path, doc in clusters:
        gpu = _check_cluster_spec(str(path.relative_to(REPO)), doc["spec"])
        assert True in gpu.values() and False in gpu.values(), f"{path}: want CPU and GPU groups, got {gpu}"


def test_kuberay_jobs_for_ingest_train_and_score():
    jobs = _kuberay("RayJob")
    by_command = {}
    for path, doc in jobs:
        where = str(path.relative_to(REPO))
        spec = doc["spec"]
        match = JOB_CALL.search(spec["entrypoint"])
        assert match, f"{where}: entrypoint is not `python …jobs/X.py`"
        by_command[_job_command(REPO / "jobs" / f"{match.group(2)}.py")] = spec
        assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict), f"{where}: runtimeEnvYAML"
        assert spec["shutdownAfterJobFinishes"] is True, where
        gpu = _check_cluster_spec(where, spec["rayClusterSpec"])
        if match.group(2) in ("train", "score"):
            assert True in gpu.values(), f"{where}: {match.group(2)} runs on GPU workers"
    assert {"ingest", "train", "score"} <= set(by_command), f"RayJobs found for {sorted(by_command)}"


def test_jobs_on_the_cluster_keep_ray_datas_progress():
    """In Ray 2.60 RAY_DATA_DISABLE_PROGRESS_BARS=1 removes the progress lines a job's log shows
    (not only a terminal's bars); the image and the manifests once set it (cluster review)."""
    files = [CLUSTER / "Dockerfile"] + sorted(CLUSTER.rglob("*.yaml"))
    assert any(p.suffix == ".yaml" for p in files)
    setting = [str(p.relative_to(REPO)) for p in files if "RAY_DATA_DISABLE_PROGRESS_BARS" in p.read_text()]
    assert not setting, f"{setting} turn Ray Data's progress off on the cluster"


def test_image_is_the_tested_ray_on_the_pinned_python():
    text = (CLUSTER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    assert args["RAY_VERSION"] == ray.__version__
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-\$\{PLATFORM\}$", text, re.M)
    assert args["PLATFORM"] == "gpu", "the default image is the GPU one (the manifests' GPU groups use it)"
    import sys
    assert args["PYTHON_TAG"] == f"py{sys.version_info.major}{sys.version_info.minor}"
    assert "TORCH_INDEX_URL" in args and "/whl/cu" in args["TORCH_INDEX_URL"], "CUDA build of torch"


def test_every_job_invocation_resolves_and_parses():
    invocations = _job_invocations()
    assert any(args is not None for *_, args in invocations), "no job command found to check"
    workdir = _dockerfile_workdir()
    for where, script, job, args in invocations:
        if os.path.isabs(script):
            assert script == f"{workdir}/jobs/{job}.py", f"{where}: {script} is not in the image's {workdir}"
        else:
            assert script == f"jobs/{job}.py", f"{where}: {script} (run from the repository root)"
        path = REPO / "jobs" / f"{job}.py"
        assert path.is_file(), f"{where}: {script} does not exist"
        command = _job_command(path)
        assert command in COMMANDS, f"{path.name} calls unknown command {command!r}"
        if args is None:
            continue
        try:
            build_parser(command).parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{where}: `vadray {command} {shlex.join(args)}` does not parse (exit {exc.code})")


def test_every_job_file_calls_a_cli_command():
    scripts = sorted((REPO / "jobs").glob("*.py"))
    assert {p.stem for p in scripts} >= {"ingest", "train", "score"}
    for path in scripts:
        command = _job_command(path)
        assert command == path.stem and command in COMMANDS, f"{path.name} → {command!r}"
