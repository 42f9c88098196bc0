"""How a job environment is built, on the in-memory runtime: as the job uid, into a directory it owns,
never as a Dockerfile build; pip's own error lines are the failure's reason."""

from __future__ import annotations

import pytest

from mlpd.runtime.environments import LABEL_BASE, LABEL_REQUIREMENTS, PREFIX, REQUIREMENTS_FILE, EnvironmentBuilder, EnvironmentFailed, env_tag
from mlpd.runtime.memory import MemoryRuntime
from mlpd.runtime.protocol import RuntimeFailure

BASE = "mlpd/train:latest"


def test_an_environment_is_built_by_running_pip_as_the_job_uid_into_its_own_directory(tmp_path):
    rt = MemoryRuntime(images=(BASE,))
    log = tmp_path / "build.log"
    tag, built = EnvironmentBuilder(rt).ensure(BASE, "humanize==4.17.0\n", str(log), "65200:65200")
    assert built and rt.image_present(tag)
    (req,) = rt.build_requests
    assert req.base == BASE and req.tag == tag and req.user == "65200:65200" and req.directory == PREFIX
    assert dict(req.files) == {REQUIREMENTS_FILE: "humanize==4.17.0\n"}
    script = req.command[-1]
    assert "pip install --user" in script and f"-r {PREFIX}/{REQUIREMENTS_FILE}" in script and f"rm -f {PREFIX}/{REQUIREMENTS_FILE}" in script
    assert req.env == {"PYTHONUSERBASE": PREFIX, "PATH": f"{PREFIX}/bin:$PATH"}
    assert req.labels[LABEL_BASE] == rt.image_id(BASE) and req.labels[LABEL_REQUIREMENTS] == tag.rpartition(":")[2]
    assert "building the environment" in log.read_text()
    # the same requirements as another uid are another environment (its files belong to that uid)
    assert env_tag(rt.image_id(BASE), "humanize==4.17.0", "65200:65200") == tag
    assert env_tag(rt.image_id(BASE), "humanize==4.17.0", "65300:65300") != tag
    assert EnvironmentBuilder(rt).ensure(BASE, "humanize==4.17.0\n", str(log), "65200:65200") == (tag, False)


class FailingPip(MemoryRuntime):
    def build_by_running(self, req):
        yield "Collecting mlpd-nope==1.0"
        yield "ERROR: No matching distribution found for mlpd-nope==1.0"
        raise RuntimeFailure(f"building {req.tag} failed: the build exited with code 1")


def test_a_failed_build_fails_with_pips_error_lines_and_leaves_no_image(tmp_path):
    rt = FailingPip(images=(BASE,))
    log = tmp_path / "build.log"
    with pytest.raises(EnvironmentFailed) as info:
        EnvironmentBuilder(rt).ensure(BASE, "mlpd-nope==1.0\n", str(log), "65200:65200")
    assert "No matching distribution found for mlpd-nope==1.0" in str(info.value)
    assert "exited with code 1" in log.read_text()
    assert rt.list_images(prefix="mlpd/env:") == []


class ChattyBuild(MemoryRuntime):
    def build_by_running(self, req):
        for i in range(40):
            yield f"{i:04d} " + "x" * 100_000
        yield "ERROR: the last words"
        raise RuntimeFailure(f"building {req.tag} failed: the build exited with code 1")


def test_a_builds_output_in_the_log_is_capped_but_pips_last_lines_still_give_the_reason(tmp_path, monkeypatch):
    import mlpd.runtime.environments as environments

    monkeypatch.setattr(environments, "MAX_BUILD_LOG_BYTES", 1_000_000)
    log = tmp_path / "build.log"
    with pytest.raises(EnvironmentFailed) as info:
        EnvironmentBuilder(ChattyBuild(images=(BASE,))).ensure(BASE, "x\n", str(log), "65200:65200")
    assert "ERROR: the last words" in str(info.value)
    text = log.read_text()
    assert len(text) < 1_200_000 and "the rest is not kept" in text and "0039 " not in text
