"""The cluster manifests under cluster/ say what the code can do: every defakenet command they run exists and its
--config files are in the repository, the RayJobs run what jobs/*.yaml run, the RayService builder imports and
takes its args, token auth is on, and MLflow comes from a Secret whose shape secrets.example.yaml shows.
Parsing and imports only: no Kubernetes, no Ray cluster."""

import importlib
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ray.serve import Application

from defakenet.cli import main
from defakenet.serve import ServeArgs
from defakenet.submit import load_job

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"


def load_docs(path: Path) -> list[dict]:
    """Every non-empty document of a (multi-document) YAML file."""
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifests() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in load_docs(p)]


def of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in manifests() if d.get("kind") == kind]


def defakenet_commands(text: str) -> list[list[str]]:
    """The argument lists of `python -m defakenet …` / `defakenet …` invocations in a shell command string."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    segments, words = [], []
    for tok in lexer:  # split at ; && || | and redirections: what follows them is not defakenet's
        if tok and set(tok) <= set(";&|<>"):
            segments.append(words)
            words = []
        else:
            words.append(tok)
    segments.append(words)
    found = []
    for words in segments:
        for i, w in enumerate(words):
            if (w == "defakenet" and i >= 1 and words[i - 1] == "-m") or w.endswith("bin/defakenet") or (
                    w == "defakenet" and i == 0):
                found.append(words[i + 1:])
                break
    return found


def check_command(args: list[str], where: str) -> None:
    """The subcommand parses --help, and every --config file it names exists and resolves."""
    sub = []
    for a in args:
        if a.startswith("-"):
            break
        sub.append(a)
    assert sub, f"{where}: no defakenet subcommand in {args}"
    with pytest.raises(SystemExit) as e:
        main([*sub, "--help"])
    assert e.value.code == 0, f"{where}: `defakenet {' '.join(sub)}` is not a command"
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    configs += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for c in configs:
        assert (REPO / c).is_file(), f"{where}: --config {c} does not exist in the repository"
        assert main(["config", "show", "--config", str(REPO / c)]) == 0, f"{where}: {c} does not resolve"


def env_of(pod_spec: dict) -> list[dict]:
    return [e for c in pod_spec.get("containers", []) for e in c.get("env", [])]


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec: RayCluster.spec, RayJob.spec.rayClusterSpec, RayService.spec.rayClusterConfig."""
    out = []
    for p, d in manifests():
        spec = d.get("spec", {})
        inner = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
                 "RayService": spec.get("rayClusterConfig")}.get(d.get("kind"))
        if inner is not None:
            out.append((f"{p.name}:{d['kind']}", inner))
    return out


def pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec.get("workerGroupSpecs", [])]
    return [g["template"]["spec"] for g in groups]


# ---- the files


def test_every_yaml_under_cluster_parses_and_has_the_expected_kinds():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert {f.relative_to(CLUSTER).as_posix() for f in files} >= {
        "kuberay/raycluster.yaml", "kuberay/rayjob-train.yaml", "kuberay/rayjob-tune.yaml",
        "kuberay/rayservice.yaml", "kuberay/secrets.example.yaml", "ray-up/aws.yaml"}
    for f in files:
        assert load_docs(f), f"{f} holds no YAML document"
    kinds = sorted(d["kind"] for _, d in manifests())
    assert kinds.count("RayCluster") == 1 and kinds.count("RayJob") == 2 and kinds.count("RayService") == 1
    for p, d in manifests():
        assert d.get("apiVersion") and d.get("metadata", {}).get("name"), f"{p}: a {d.get('kind')} without a name"
        if d["kind"].startswith("Ray"):
            assert d["apiVersion"] == "ray.io/v1", p


# ---- entrypoints


def test_rayjob_entrypoints_are_the_jobs_entrypoints_and_exist():
    jobs = {load_job(REPO / "jobs" / f"{n}.yaml")["entrypoint"]: n for n in ("train", "tune")}
    seen = set()
    for p, d in of_kind("RayJob"):
        ep = d["spec"]["entrypoint"]
        assert ep in jobs, f"{p}: entrypoint {ep!r} is none of jobs/train.yaml, jobs/tune.yaml: {sorted(jobs)}"
        seen.add(jobs[ep])
        (args,) = defakenet_commands(ep)
        check_command(args, p.name)
        runtime_env = yaml.safe_load(d["spec"]["runtimeEnvYAML"])
        assert runtime_env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0", p
    assert seen == {"train", "tune"}


def test_ray_up_commands_that_run_defakenet_exist():
    conf = load_docs(CLUSTER / "ray-up" / "aws.yaml")[0]
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in conf, f"ray-up/aws.yaml: no {key}"
    assert conf["provider"]["type"] == "aws"
    assert conf["head_node_type"] in conf["available_node_types"]
    commands = [c for k, v in conf.items() if k.endswith("_commands") for c in v]
    found = [args for c in commands for args in defakenet_commands(c)]
    assert found, "ray-up/aws.yaml runs no defakenet command"
    for args in found:
        check_command(args, "ray-up/aws.yaml")
    starts = conf["head_start_ray_commands"] + conf["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c), "token auth off on a node"
    assert any("pip install" in c for c in conf["setup_commands"]), "setup_commands install nothing"


def test_command_finder_and_checker_catch_typos():
    assert defakenet_commands("cd x && ~/venv/bin/python -m defakenet config show --config a.yaml > /dev/null") == [
        ["config", "show", "--config", "a.yaml"]]
    with pytest.raises(AssertionError):
        check_command(["train", "--config", "jobs/configs/train-gpu.yml"], "typo")
    with pytest.raises((AssertionError, SystemExit)):
        check_command(["trian", "--config", "jobs/configs/train-gpu.yaml"], "typo")


# ---- serving


def serve_applications() -> list[tuple[Path, dict]]:
    return [(p, app) for p, d in of_kind("RayService")
            for app in yaml.safe_load(d["spec"]["serveConfigV2"])["applications"]]


def check_application(app: dict) -> None:
    module, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert callable(builder)
    args = ServeArgs(**app.get("args", {}))  # unknown keys are ignored by pydantic: check them by hand
    unknown = set(app.get("args", {})) - set(ServeArgs.model_fields)
    assert not unknown, f"args {sorted(unknown)} are not ServeArgs fields: {sorted(ServeArgs.model_fields)}"
    names, todo = set(), [builder(args)]
    while todo:  # the ingress and the deployments it was bound to
        dep = todo.pop()._bound_deployment
        names.add(dep.name)
        todo += [a for a in (*dep.init_args, *dep.init_kwargs.values()) if isinstance(a, Application)]
    for dep in app.get("deployments", []):
        assert dep["name"] in names, f"deployment {dep['name']} is not in the application: {sorted(names)}"


def test_rayservice_builds_the_defakenet_application():
    from ray.serve.schema import ServeDeploySchema

    (_, svc), = of_kind("RayService")
    ServeDeploySchema.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"]))  # Serve's own schema
    apps = serve_applications()
    assert [a["import_path"] for _, a in apps] == ["defakenet.serve:build_app"]
    for _, app in apps:
        check_application(app)
        assert app["args"]["model"].endswith("@champion"), "production serves the champion alias"
        # the tracking URI is not written here: the replicas read $MLFLOW_TRACKING_URI from the Secret
        assert not app["args"].get("tracking_uri")
    env = {e["name"] for pod in pod_specs(svc["spec"]["rayClusterConfig"]) for e in env_of(pod)}
    assert ServeArgs.model_fields["auth_token_env"].default in env, "the endpoint's bearer token is not set"


def test_application_checks_fail_on_typos():
    good = serve_applications()[0][1]
    for bad in ({**good, "import_path": "defakenet.serve:build_ap"},
                {**good, "import_path": "defakenet.serv:build_app"},
                {**good, "args": {**good["args"], "max_batch_sise": 8}},
                {**good, "args": {**good["args"], "max_replicas": 0}},
                {**good, "deployments": [{"name": "Detectr"}]}):
        with pytest.raises((AssertionError, AttributeError, ImportError, ValueError)):
            check_application(bad)


# ---- auth, secrets, telemetry, storage


def test_token_auth_on_everywhere():
    specs = cluster_specs()
    assert {name.split(":")[1] for name, _ in specs} == {"RayCluster", "RayJob", "RayService"}
    for name, spec in specs:
        assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: authOptions.mode is not token"
        version = tuple(int(x) for x in str(spec["rayVersion"]).split(".")[:2])
        assert version >= (2, 52), f"{name}: authOptions needs rayVersion >= 2.52, not {spec['rayVersion']}"


def test_mlflow_from_a_secret_and_secret_refs_exist():
    examples = {d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
                for d in load_docs(KUBERAY / "secrets.example.yaml") if d["kind"] == "Secret"}
    refs = 0
    for name, spec in cluster_specs():
        for pod in pod_specs(spec):
            env = env_of(pod)
            by_name = {e["name"]: e for e in env}
            uri = by_name.get("MLFLOW_TRACKING_URI", {})
            assert "secretKeyRef" in uri.get("valueFrom", {}), f"{name}: MLFLOW_TRACKING_URI is not from a Secret"
            assert by_name.get("RAY_USAGE_STATS_ENABLED", {}).get("value") == "0", f"{name}: telemetry on"
            for e in env:
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs += 1
                    assert ref["name"] in examples, f"{name}: Secret {ref['name']} not in secrets.example.yaml"
                    assert ref["key"] in examples[ref["name"]], \
                        f"{name}: key {ref['key']} not in Secret {ref['name']} of secrets.example.yaml"
    assert refs


def test_gpu_workers_autoscale_and_mount_the_config_paths():
    for name, spec in cluster_specs():
        assert spec.get("enableInTreeAutoscaling") is True, name
        gpu = [g for g in spec["workerGroupSpecs"]
               if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                      for c in g["template"]["spec"]["containers"])]
        assert gpu and all(g["maxReplicas"] >= g["minReplicas"] for g in gpu), f"{name}: no GPU worker group"
        for pod in pod_specs(spec):
            mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
            assert {"/mnt/data", "/mnt/models", "/mnt/shared"} <= mounts, f"{name}: shared storage not mounted"


# ---- the local recipe


def test_local_start_script():
    script = CLUSTER / "local" / "start.sh"
    text = script.read_text()
    assert "set -euo pipefail" in text and "RAY_AUTH_MODE=token" in text
    assert "0.0.0.0" not in text
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(script)], check=True)
