"""One contract for every GPU inventory: declared devices and real NVML.

On a host without an NVIDIA driver the NVML inventory is empty (and the contract
holds trivially for devices, while 'no driver means no GPUs, not an error' is
checked); on a GPU host the same tests run against real devices.
"""

import pytest

from mlpd.runtime.gpus import DeclaredInventory, GpuInfo, NvmlInventory, make_inventory


@pytest.fixture(params=["declared", "nvml"])
def inventory(request):
    if request.param == "declared":
        return DeclaredInventory(3, "declared")
    return NvmlInventory()


def test_devices_are_gpuinfo_ordered_by_index_with_unique_uuids(inventory):
    devices = inventory.devices()
    assert all(isinstance(d, GpuInfo) for d in devices)
    assert [d.index for d in devices] == list(range(len(devices)))
    assert len({d.uuid for d in devices}) == len(devices)
    assert all(d.name for d in devices)


def test_devices_are_stable_between_calls(inventory):
    assert [d.uuid for d in inventory.devices()] == [d.uuid for d in inventory.devices()]


def test_declared_devices_never_pass_for_real(inventory):
    for d in inventory.devices():
        assert d.declared == (inventory.kind == "declared")
        assert d.uuid.startswith("DECLARED-") == d.declared
        if d.declared:
            assert d.memory_total is None and d.utilization is None


def test_to_dict_is_json_ready(inventory):
    import json

    for d in inventory.devices():
        data = json.loads(json.dumps(d.to_dict()))
        assert data["uuid"] == d.uuid and data["declared"] == d.declared


def test_no_driver_means_no_gpus_not_an_error():
    inv = NvmlInventory()
    if inv.available:  # a GPU host: the driver answers, and with devices
        assert inv.error is None and inv.devices()
    else:
        assert inv.devices() == [] and inv.error


def test_make_inventory_picks_declared_when_asked():
    inv = make_inventory(2, "A100-declared")
    assert inv.kind == "declared"
    assert [d.name for d in inv.devices()] == ["A100-declared", "A100-declared"]
