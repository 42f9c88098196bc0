"""The serving proxy's configuration and plans (mlpd.serving_front), without a daemon."""

from __future__ import annotations

import os
import subprocess

import pytest

from mlpd import serving_front
from mlpd.config import ConfigError, load_config


def test_haproxy_accepts_the_configuration(tmp_path):
    binary = serving_front.find_haproxy()
    if binary is None:  # under CI it must be there: tests/run.sh and install.sh install it
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is not installed though CI=true (tests/run.sh installs it)")
        pytest.skip("needs haproxy, the serving proxy (apt-get install haproxy)")
    for name in serving_front.MAPS:
        (tmp_path / f"{name}.map").write_text("")
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(serving_front.config_text(str(tmp_path), "127.0.0.1:18471", 64))
    checked = subprocess.run([binary, "-c", "-f", str(conf)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_a_canary_gets_its_share_of_the_weight_and_none_without_a_serving_revision():
    w = serving_front.weights([("a", 1), ("b", 2)], [("c", 3)], 20)
    assert w == {"a": (1, 102), "b": (2, 102), "c": (3, 51)}
    assert 51 / (102 + 102 + 51) == pytest.approx(0.2, abs=0.005)
    assert serving_front.weights([("a", 1)], [], 20) == {"a": (1, 256)}  # a canary with no healthy replica: all to the serving one
    assert serving_front.weights([], [("c", 3)], 20) == {"c": (3, 256)}


def test_deployments_keep_their_backend_and_new_ones_take_a_free_one():
    want = serving_front.Desired(
        deployments={"old": {"owner": "ann", "key_hash": "k1", "open": False, "servers": {}},
                     "new": {"owner": "bob", "key_hash": "k2", "open": True, "servers": {}}},
        users={"h1": "ann", "h2": serving_front.ADMIN})
    maps = serving_front.plan_maps(want, {"old": "b0", "gone": "b1"})
    assert maps["deployments"] == {"old": "b0", "new": "b2"}  # b1 is still the removed one's until its servers are gone
    assert maps["owners"] == {"old": "ann", "new": "bob"} and maps["keys"] == {"k1": "old", "k2": "new"}
    assert maps["open"] == {"new": "1"} and maps["users"] == {"h1": "ann", "h2": "*"}


def test_serving_listen_is_auto_by_default_and_checked(tmp_path):
    assert serving_front.resolve_listen("auto", "127.0.0.1:8470") == "127.0.0.1:8471"
    assert serving_front.resolve_listen("0.0.0.0:9000", "127.0.0.1:8470") == "0.0.0.0:9000"
    bad = tmp_path / "mlpd.toml"
    bad.write_text('[serving]\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError, match="serving.listen"):
        load_config(str(bad))
