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


def definitions(config) -> list[ImageDef]:
    """The images mlpd builds, in build order."""
    train = config["jobs.default_image"]
    return [ImageDef(train, "train", "training jobs: Python 3 (python), numpy, pandas, scikit-learn, scipy, matplotlib, the MLflow client; user 1000"),
            ImageDef(config["workspaces.image"], "workspace", "workspaces: JupyterLab, ipykernel and papermill on the training image", built_on=train)]


def image_status(runtime, config) -> list[dict]:
    """Each image mlpd needs (base included) and whether it is present."""
    present = {i["tag"]: i for i in runtime.list_images(prefix="")}
    out = []
    base = config["images.base"]
    out.append({"tag": base, "role": "base", "present": base in present, **({k: present[base][k] for k in ("id", "size", "created")} if base in present else {})})
    for d in definitions(config):
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
    for line in proc.stdout:
        yield "  " + line.rstrip()
    if proc.wait() != 0:
        from mlpd.runtime import RuntimeFailure

        raise RuntimeFailure(f"building the base image {tag} failed (exit {proc.returncode}); see the lines above")


def build_missing(runtime, config, force: bool = False) -> Iterator[str]:
    """Build the base (if needed) and every mlpd image that is missing (all with force); yields progress."""
    base = config["images.base"]
    yield from build_base(runtime, base)
    rebuilt: set[str] = set()
    for d in definitions(config):
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
            args = {"TRAIN": d.built_on} if d.built_on else {"BASE": base}
            for line in runtime.build_image(context, d.tag, args, labels={SOURCE_LABEL: source}):
                yield "  " + line
        rebuilt.add(d.tag)
        yield f"{d.tag}: built"


SOURCE_LABEL = "org.mlpd.source"


def expected_source(runtime, config, d: ImageDef) -> str:
    """The source digest an up-to-date build of d carries: its directory and base, and for an image
    built on another mlpd image, that image's id (so it is current only if that one is)."""
    base = config["images.base"]
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
        bundle = os.environ.get("MLPD_BUILD_CA_BUNDLE") or next((p for p in HOST_CA_BUNDLES if os.path.exists(p)), None)
        if bundle and os.path.exists(bundle):
            shutil.copyfile(bundle, os.path.join(context, "host-ca.crt"))
        yield context
