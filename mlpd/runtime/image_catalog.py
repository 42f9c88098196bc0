"""mlpd's container images: what exists, and building what is missing.

The base image comes from a registry where one is reachable (images.base set to
e.g. python:3.11-slim-bookworm) or is built locally with debootstrap and
`docker import` (images.base = mlpd/base:..., the default), so a machine with no
registry access still gets working images.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from typing import Iterator



def images_dir() -> str:
    """The images/ directory (mlpd.images in an installed wheel)."""
    import mlpd.images as pkg  # the package-dir mapping puts images/ here, editable or not

    return os.path.dirname(pkg.__file__)


@dataclass(frozen=True)
class ImageDef:
    tag: str
    directory: str  # under images/
    description: str
    built_on: str = ""  # the mlpd image this one starts FROM (build arg TRAIN); "" = the base (build arg BASE)
    args: tuple[tuple[str, str], ...] = ()  # when set: every build arg, instead of TRAIN/BASE above
    pull: str = ""  # a registry image the build starts from, pulled first
    fallback: "ImageDef | None" = None  # built instead when pull cannot be had

    def build_args(self, base: str, job_user: str) -> dict[str, str]:
        """The build args `docker build` gets for this image (base: images.base; job_user: jobs.container_user,
        the uid:gid of the account the image makes and runs as)."""
        uid, _, gid = job_user.partition(":")
        own = dict(self.args) if self.args else ({"TRAIN": self.built_on} if self.built_on else {"BASE": base})
        return {**own, "JOB_UID": uid, "JOB_GID": gid}


# The optional images: not built unless asked for (`mlpd images build --with NAME`, images.extra).
EXTRAS = ("pytorch",)
PYTORCH_TAG = "mlpd/pytorch:latest"
# A CUDA runtime base whose CUDA matches the torch wheel variant (cu126), on Ubuntu 24.04 for Python
# 3.12 (the scientific stack's pins need 3.11 or newer). torch's own version is pinned in
# images/pytorch/Dockerfile.
PYTORCH_CUDA_BASE = "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"
PYTORCH_CUDA_VARIANT = "cu126"


def pytorch_definition(config, nvidia: bool) -> ImageDef:
    """Which PyTorch image to build on this host (images.pytorch_base; nvidia: the engine has the
    NVIDIA runtime). "auto": on a GPU host, the pinned CUDA base from a registry, falling back to the
    training image when it cannot be pulled; elsewhere the training image with the CPU wheel.
    "local": always the training image (the locally bootstrapped base), with the CUDA wheel on a GPU
    host. Any other name: that image, pulled, with the CUDA wheel."""
    setting = config["images.pytorch_base"]
    train = config["jobs.default_image"]
    variant = PYTORCH_CUDA_VARIANT if nvidia else "cpu"
    local = ImageDef(PYTORCH_TAG, "pytorch", f"PyTorch ({variant} wheel) on the training image", built_on=train,
                     args=(("BASE", train), ("TORCH_VARIANT", variant), ("INSTALL_STACK", "0")))
    if setting == "local" or (setting == "auto" and not nvidia):
        return local
    base = PYTORCH_CUDA_BASE if setting == "auto" else setting
    return ImageDef(PYTORCH_TAG, "pytorch", f"PyTorch ({PYTORCH_CUDA_VARIANT} wheel) on {base}, with the training image's stack",
                    args=(("BASE", base), ("TORCH_VARIANT", PYTORCH_CUDA_VARIANT), ("INSTALL_STACK", "1")),
                    pull=base, fallback=local if setting == "auto" else None)


def definitions(config, extra: tuple[str, ...] | list[str] = (), nvidia: bool = False) -> list[ImageDef]:
    """The images mlpd builds, in build order: the default ones, then the optional ones named in
    extra or in images.extra (nvidia: whether the engine has the NVIDIA runtime)."""
    train = config["jobs.default_image"]
    out = [ImageDef(train, "train", "training jobs: Python 3 (python), numpy, pandas, scikit-learn, scipy, matplotlib, the MLflow client; "
                    "user jobs.container_user"),
           ImageDef(config["workspaces.image"], "workspace", "workspaces: JupyterLab, ipykernel and papermill on the training image", built_on=train)]
    wanted = set(extra) | set(config["images.extra"])
    unknown = sorted(wanted - set(EXTRAS))
    if unknown:
        raise ValueError(f"unknown optional image {unknown[0]!r}: known are {', '.join(EXTRAS)}")
    if "pytorch" in wanted:
        out.append(pytorch_definition(config, nvidia))
    return out


def image_status(runtime, config) -> list[dict]:
    """Each image mlpd needs (base included) and whether it is present."""
    present = {i["tag"]: i for i in runtime.list_images(prefix="")}
    out = []
    base = config["images.base"]
    out.append({"tag": base, "role": "base", "present": base in present, **({k: present[base][k] for k in ("id", "size", "created")} if base in present else {})})
    for d in definitions(config, nvidia=bool(config["images.extra"]) and runtime.engine_info().get("nvidia")):
        item = {"tag": d.tag, "role": d.directory, "present": d.tag in present, "description": d.description}
        if d.tag in present:
            item.update({k: present[d.tag][k] for k in ("id", "size", "created")})
        out.append(item)
    return out


def build_base(runtime, tag: str) -> Iterator[str]:
    """Make the base image: pull it when it is a registry image, else debootstrap + docker import."""
    if runtime.image_present(tag):
        yield f"base {tag}: present"
        return
    if not tag.startswith("mlpd/base"):
        yield f"base {tag}: pulling"
        runtime.pull_image(tag)
        yield f"base {tag}: pulled"
        return
    script = os.path.join(images_dir(), "base", "build.sh")
    yield f"base {tag}: building with debootstrap (about a minute)"
    proc = subprocess.Popen(["bash", script, tag], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None  # stdout=PIPE
    for line in proc.stdout:
        yield "  " + line.rstrip()
    if proc.wait() != 0:
        from mlpd.runtime.protocol import RuntimeFailure

        raise RuntimeFailure(f"building the base image {tag} failed (exit {proc.returncode}); see the lines above")


def build_missing(runtime, config, force: bool = False, extra: tuple[str, ...] | list[str] = ()) -> Iterator[str]:
    """Build the base (if needed) and every mlpd image that is missing (all with force), the optional
    images in extra and images.extra included; yields progress."""
    from mlpd.runtime.protocol import RuntimeFailure

    base = config["images.base"]
    try:
        wanted = definitions(config, extra, nvidia=bool(runtime.engine_info().get("nvidia")) if extra or config["images.extra"] else False)
    except ValueError as exc:
        raise RuntimeFailure(str(exc)) from None
    yield from build_base(runtime, base)
    rebuilt: set[str] = set()
    for d in wanted:
        if d.pull and not runtime.image_present(d.pull):
            yield f"{d.tag}: pulling its base {d.pull}"
            try:
                runtime.pull_image(d.pull)
            except RuntimeFailure as exc:
                if d.fallback is None:
                    raise RuntimeFailure(f"{d.tag}: {exc}; set images.pytorch_base = \"local\" to build it on the training image") from None
                yield f"{d.tag}: {exc}: building it on the training image instead"
                d = d.fallback
        source = expected_source(runtime, config, d)
        if d.built_on in rebuilt:
            force = True
        if runtime.image_present(d.tag) and not force:
            if runtime.image_labels(d.tag).get(SOURCE_LABEL) == source:
                yield f"{d.tag}: present"
                continue
            yield f"{d.tag}: present but built from other sources than images/{d.directory}: rebuilding"
        yield f"{d.tag}: building from images/{d.directory}"
        with build_context(os.path.join(images_dir(), d.directory)) as context:
            for line in runtime.build_image(context, d.tag, d.build_args(base, config["jobs.container_user"]), labels={SOURCE_LABEL: source}):
                yield "  " + line
        rebuilt.add(d.tag)
        yield f"{d.tag}: built"


SOURCE_LABEL = "org.mlpd.source"


def expected_source(runtime, config, d: ImageDef) -> str:
    """The source digest an up-to-date build of d carries: its directory, base and job uid, and for an image
    built on another mlpd image, that image's id (so it is current only if that one is)."""
    base = config["images.base"] + "+user=" + config["jobs.container_user"]
    if d.args:  # which base and wheel it was built with are part of its source
        base += "+" + ",".join(f"{k}={v}" for k, v in d.args)
    return source_digest(os.path.join(images_dir(), d.directory), base + (f"+{runtime.image_id(d.built_on)}" if d.built_on else ""))


def source_digest(directory: str, base: str) -> str:
    """sha256 over an image directory's files and its base, so a changed Dockerfile means a rebuild."""
    import hashlib

    h = hashlib.sha256(base.encode())
    for root, dirs, files in sorted(os.walk(directory)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, directory).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:16]


HOST_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


@contextlib.contextmanager
def build_context(directory: str) -> Iterator[str]:
    """A copy of an image directory with the host's CA bundle added as host-ca.crt.

    pip inside the build reaches PyPI with the host's trust store, so a TLS-inspecting
    proxy whose CA only the host trusts does not break the build (the bundle holds
    public certificates only).
    """
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mlpd-build-") as tmp:
        context = os.path.join(tmp, "context")
        shutil.copytree(directory, context)
        bundle = host_ca_bundle()
        if bundle:
            shutil.copyfile(bundle, os.path.join(context, "host-ca.crt"))
        yield context


def host_ca_bundle() -> str | None:
    """The host's CA bundle (MLPD_BUILD_CA_BUNDLE, else the distribution's), as a real path; None when there is none."""
    bundle = os.environ.get("MLPD_BUILD_CA_BUNDLE") or next((p for p in HOST_CA_BUNDLES if os.path.exists(p)), None)
    return os.path.realpath(bundle) if bundle and os.path.exists(bundle) else None
