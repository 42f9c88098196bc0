"""Which images `mlpd images build` makes, from which base, with which build args: the default ones
always, the optional PyTorch image only when asked for, and its base chosen by the host (the NVIDIA
runtime, a reachable registry) and images.pytorch_base. Built on the in-memory runtime, which records
nothing but what a build would tag; nothing here builds a real image (PyTorch is GBs)."""

from __future__ import annotations

import os
import re

import pytest
from click.testing import CliRunner

from mlpd.cli import main
from mlpd.config import ConfigError, load_config
from mlpd.runtime.image_catalog import (EXTRAS, PYTORCH_CUDA_BASE, PYTORCH_CUDA_VARIANT, PYTORCH_TAG, build_missing,
                                definitions, expected_source, images_dir, pytorch_definition)
from mlpd.runtime.memory import MemoryRuntime
from mlpd.runtime.protocol import RuntimeFailure

PYTORCH_DOCKERFILE = os.path.join(images_dir(), "pytorch", "Dockerfile")
TRAIN_DOCKERFILE = os.path.join(images_dir(), "train", "Dockerfile")
JOB_ARGS = {"JOB_UID": "65200", "JOB_GID": "65200"}  # the default jobs.container_user, passed to every build


def config(tmp_path, images: str = "") -> object:
    path = tmp_path / "mlpd.toml"
    path.write_text(f"[server]\nstate_dir = \"{tmp_path / 'state'}\"\n[images]\n{images}\n")
    return load_config(str(path))


class RecordingRuntime(MemoryRuntime):
    """The in-memory runtime, keeping the build args of each build; pulls succeed when a registry is set."""

    def __init__(self, nvidia: bool = False, registry: tuple[str, ...] = ()):
        super().__init__(images=("mlpd/base:bookworm",))
        self.has_nvidia = nvidia
        self.registry = registry
        self.builds: dict[str, dict[str, str]] = {}
        self.pulled: list[str] = []

    def build_image(self, path, tag, buildargs, labels=None):
        self.builds[tag] = dict(buildargs)
        yield from super().build_image(path, tag, buildargs, labels)

    def pull_image(self, image):
        if image not in self.registry:
            return super().pull_image(image)  # ImageMissing: no registry
        self.pulled.append(image)
        self.images[image] = {}


def test_by_default_only_the_training_and_workspace_images_are_built(tmp_path):
    cfg = config(tmp_path)
    assert [d.directory for d in definitions(cfg)] == ["train", "workspace"]
    rt = RecordingRuntime(nvidia=True, registry=(PYTORCH_CUDA_BASE,))
    lines = list(build_missing(rt, cfg))
    assert set(rt.builds) == {"mlpd/train:latest", "mlpd/workspace:latest"} and rt.pulled == []
    job = {"JOB_UID": "65200", "JOB_GID": "65200"}  # jobs.container_user
    assert rt.builds["mlpd/train:latest"] == {"BASE": "mlpd/base:bookworm", **job}
    assert rt.builds["mlpd/workspace:latest"] == {"TRAIN": "mlpd/train:latest", **job}
    assert not any("pytorch" in line for line in lines)


def test_pytorch_is_built_when_asked_for_by_flag_or_by_config(tmp_path):
    assert EXTRAS == ("pytorch",)
    assert [d.tag for d in definitions(config(tmp_path), ["pytorch"])][-1] == PYTORCH_TAG
    assert [d.tag for d in definitions(config(tmp_path, 'extra = ["pytorch"]'))][-1] == PYTORCH_TAG
    with pytest.raises(ValueError, match="unknown optional image 'tensorflow'"):
        definitions(config(tmp_path), ["tensorflow"])


@pytest.mark.parametrize("setting, nvidia, base, variant, stack, pull, fallback", [
    ("auto", False, "mlpd/train:latest", "cpu", "0", "", None),                                      # no GPUs: CPU wheel, local
    ("auto", True, PYTORCH_CUDA_BASE, PYTORCH_CUDA_VARIANT, "1", PYTORCH_CUDA_BASE, PYTORCH_CUDA_VARIANT),  # GPUs: CUDA base
    ("local", True, "mlpd/train:latest", PYTORCH_CUDA_VARIANT, "0", "", None),                      # no registry: CUDA wheel, local
    ("local", False, "mlpd/train:latest", "cpu", "0", "", None),
    ("registry.example/cuda:12.6", False, "registry.example/cuda:12.6", PYTORCH_CUDA_VARIANT, "1", "registry.example/cuda:12.6", None),
])
def test_which_base_wheel_and_build_args_the_pytorch_image_gets(tmp_path, setting, nvidia, base, variant, stack, pull, fallback):
    d = pytorch_definition(config(tmp_path, f'pytorch_base = "{setting}"'), nvidia)
    assert d.tag == PYTORCH_TAG and d.directory == "pytorch" and d.pull == pull
    assert d.build_args("mlpd/base:bookworm", "65200:65201") == {"BASE": base, "TORCH_VARIANT": variant, "INSTALL_STACK": stack,
                                                                "JOB_UID": "65200", "JOB_GID": "65201"}
    # built on the training image: rebuilt when that one is, as the workspace image is
    assert d.built_on == ("mlpd/train:latest" if base == "mlpd/train:latest" else "")
    if fallback is None:
        assert d.fallback is None
    else:
        assert d.fallback.build_args("x", "65200:65200") == {"BASE": "mlpd/train:latest", "TORCH_VARIANT": fallback, "INSTALL_STACK": "0",
                                                             "JOB_UID": "65200", "JOB_GID": "65200"}


def test_a_gpu_host_with_a_registry_pulls_the_cuda_base(tmp_path):
    rt = RecordingRuntime(nvidia=True, registry=(PYTORCH_CUDA_BASE,))
    lines = list(build_missing(rt, config(tmp_path), extra=["pytorch"]))
    assert rt.pulled == [PYTORCH_CUDA_BASE]
    assert rt.builds[PYTORCH_TAG] == {"BASE": PYTORCH_CUDA_BASE, "TORCH_VARIANT": PYTORCH_CUDA_VARIANT, "INSTALL_STACK": "1", **JOB_ARGS}
    assert f"{PYTORCH_TAG}: built" in lines


def test_a_gpu_host_without_a_registry_builds_it_on_the_training_image(tmp_path):
    rt = RecordingRuntime(nvidia=True)
    lines = list(build_missing(rt, config(tmp_path, 'extra = ["pytorch"]')))
    assert rt.builds[PYTORCH_TAG] == {"BASE": "mlpd/train:latest", "TORCH_VARIANT": PYTORCH_CUDA_VARIANT, "INSTALL_STACK": "0", **JOB_ARGS}
    assert any("could not be pulled" in line and "building it on the training image instead" in line for line in lines), lines
    # built once; the next run finds it current (the fallback's sources are what it carries)
    again = list(build_missing(rt, config(tmp_path, 'extra = ["pytorch"]')))
    assert f"{PYTORCH_TAG}: present" in again


def test_a_named_base_that_cannot_be_pulled_fails_with_what_to_do(tmp_path):
    rt = RecordingRuntime(nvidia=True)
    with pytest.raises(RuntimeFailure, match=r"images.pytorch_base = \"local\""):
        list(build_missing(rt, config(tmp_path, 'pytorch_base = "registry.example/cuda:12.6"'), extra=["pytorch"]))
    assert PYTORCH_TAG not in rt.builds


def test_a_cpu_host_gets_the_cpu_wheel_and_switching_variant_means_a_rebuild(tmp_path):
    rt = RecordingRuntime(nvidia=False)
    list(build_missing(rt, config(tmp_path), extra=["pytorch"]))
    assert rt.builds[PYTORCH_TAG] == {"BASE": "mlpd/train:latest", "TORCH_VARIANT": "cpu", "INSTALL_STACK": "0", **JOB_ARGS}
    cfg = config(tmp_path)
    assert expected_source(rt, cfg, pytorch_definition(cfg, False)) != expected_source(rt, cfg, pytorch_definition(cfg, True).fallback)


def pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"\b([a-z][a-z0-9_-]*)==([0-9][0-9.]*)\b", text))


def test_the_pytorch_dockerfile_pins_its_versions():
    text = open(PYTORCH_DOCKERFILE).read()
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", text, re.M))
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"]), args
    assert '"torch==${TORCH_VERSION}"' in text and "download.pytorch.org/whl/${TORCH_VARIANT}" in text
    # the stack on a CUDA base is the training image's, pin for pin, MLflow client included
    train = open(TRAIN_DOCKERFILE).read()
    assert pins(text) == pins(train) and len(pins(train)) >= 7
    assert args["MLFLOW_CLIENT_VERSION"] == dict(re.findall(r"^ARG (\w+)=(\S*)$", train, re.M))["MLFLOW_CLIENT_VERSION"]
    # every build arg the catalog passes is declared; the CUDA base is a pinned tag matching the wheel
    assert {"BASE", "TORCH_VARIANT", "INSTALL_STACK"} <= set(args)
    cuda = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu\d+\.\d+", PYTORCH_CUDA_BASE)
    assert cuda and PYTORCH_CUDA_VARIANT == f"cu{cuda.group(1)}{cuda.group(2)}"
    assert "USER ${JOB_UID}:${JOB_GID}" in text


def test_every_image_makes_and_runs_as_the_configured_job_account(tmp_path):
    """The images carry an account of jobs.container_user's uid (sshd and getpass need one) and run as it;
    a changed uid makes them stale."""
    import re as _re

    from mlpd.runtime.image_catalog import definitions, expected_source, images_dir
    from mlpd.runtime.memory import MemoryRuntime

    cfg = config(tmp_path, "")
    for d in definitions(cfg):
        assert {"JOB_UID": "65200", "JOB_GID": "65200"}.items() <= d.build_args("mlpd/base:bookworm", cfg["jobs.container_user"]).items()
    for name in ("train", "workspace", "pytorch"):
        text = open(os.path.join(images_dir(), name, "Dockerfile")).read()
        assert _re.findall(r"^USER (.*)$", text, _re.M)[-1] == "${JOB_UID}:${JOB_GID}", name
        assert "ARG JOB_UID=65200" in text and "1000" not in text.replace("10000", ""), name
    rt = MemoryRuntime("x", images=())
    train = definitions(cfg)[0]
    other = load_config(str(tmp_path / "mlpd.toml"), {"jobs.container_user": "65300:65300"})
    assert expected_source(rt, cfg, train) != expected_source(rt, other, train)


def test_unknown_optional_images_are_refused_by_config_and_by_the_cli(tmp_path):
    with pytest.raises(ConfigError, match=r"images.extra.*'tensorflow'"):
        config(tmp_path, 'extra = ["tensorflow"]')
    with pytest.raises(ConfigError, match=r"images.pytorch_base"):
        config(tmp_path, 'pytorch_base = ""')
    result = CliRunner().invoke(main, ["images", "build", "--with", "tensorflow"])
    assert result.exit_code == 2 and "Invalid value for '--with'" in result.output and "'tensorflow'" in result.output
    assert "Traceback" not in result.output
    help_text = CliRunner().invoke(main, ["images", "build", "--help"]).output
    assert "--with" in help_text and "pytorch" in help_text
