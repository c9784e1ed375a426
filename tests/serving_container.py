"""The inference server's image run as its Kubernetes Deployment runs it (the containers
tests and bench/containers.py): command, user, read-only root, token mount, from
infra/k8s/base/serving.yaml."""

from pathlib import Path

from image_finetune.pipelines.containers import Mount

SERVING_MANIFEST = Path(__file__).resolve().parents[1] / "infra" / "k8s" / "base" / "serving.yaml"


def serving_deployment() -> tuple[dict, dict]:
    """The serving Deployment's pod security context and its one container (serving.yaml)."""
    import yaml

    documents = yaml.safe_load_all(SERVING_MANIFEST.read_text())
    [deployment] = [d for d in documents if d and d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return pod["securityContext"], container


def start_server_container(
    client,
    image: str,
    environment: dict[str, str],
    token_folder: Path,
    mounts: list[Mount],
    port: int,
):
    """The inference server in ``image`` as the Deployment starts it: its command, args,
    environment (``environment`` adds what its Secrets would), user, read-only root file
    system, no capabilities, ``/tmp`` in memory, the token folder mounted where it reads it,
    port 8080 published on 127.0.0.1:``port``. Returns the running container."""
    from docker.types import Mount as DockerMount

    pod, spec = serving_deployment()
    [token_mount] = [m for m in spec["volumeMounts"] if m["name"] == "token"]
    binds = [DockerMount(token_mount["mountPath"], str(token_folder), type="bind", read_only=True)]
    binds += [
        DockerMount(str(m.path), str(m.path), type="bind", read_only=not m.writable) for m in mounts
    ]
    return client.containers.run(
        image,
        entrypoint=spec["command"],
        command=spec["args"],
        detach=True,
        user=f"{pod['runAsUser']}:{pod['runAsGroup']}",
        environment={**{e["name"]: e["value"] for e in spec["env"]}, **environment},
        read_only=spec["securityContext"]["readOnlyRootFilesystem"],
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        tmpfs={"/tmp": "size=1g"},
        ports={"8080/tcp": ("127.0.0.1", port)},
        mounts=binds,
    )
