"""Slot ports inside the kernel's ephemeral range are said at once (doctor, the worker's start,
the bench refuses them), since outgoing connections take ports from there and a deploy whose
slot port one holds fails with "port taken"."""

from __future__ import annotations

import logging

import pytest

from app import doctor, slots, startup
from bench.__main__ import parse

LINUX_DEFAULT = (32768, 60999)


@pytest.mark.parametrize("ports, overlaps", [
    ((20000, 29999), False),
    ((20000, 32767), False),
    ((20000, 32768), True),
    ((44000, 47999), True),
    ((60999, 61999), True),
    ((61000, 62000), False),
    ((30000, 65535), True),
])
def test_overlap_with_the_ephemeral_range(ports, overlaps):
    problem = slots.ephemeral_overlap("SLOT_PORTS", ports, LINUX_DEFAULT)
    assert (problem is not None) is overlaps
    if overlaps:
        assert problem.startswith(f"SLOT_PORTS {ports[0]}-{ports[1]} overlaps the kernel's ephemeral port range "
                                  "32768-60999")
        assert "below 32768 or above 60999" in problem


def test_no_range_known_is_no_problem():
    assert slots.ephemeral_overlap("SLOT_PORTS", (44000, 47999), None) is None


@pytest.fixture
def kernel_range(tmp_path, monkeypatch):
    """The kernel's range as this test says (a file standing in for /proc's)."""
    def set_range(low: int, high: int) -> None:
        path = tmp_path / "ip_local_port_range"
        path.write_text(f"{low}\t{high}\n")
        monkeypatch.setattr(slots, "EPHEMERAL_PORTS", path)
    return set_range


def test_the_kernel_range_is_read(kernel_range):
    kernel_range(40000, 50000)
    assert slots.ephemeral_range() == (40000, 50000)


def test_doctor_and_worker_start_say_it_in_one_line(kernel_range, make_settings, caplog):
    settings = make_settings(SLOT_PORTS="20000-29999")
    kernel_range(*LINUX_DEFAULT)
    assert doctor._slot_ports(settings).ok
    kernel_range(25000, 60999)
    check = doctor._slot_ports(settings)
    assert not check.ok and check.detail.startswith("SLOT_PORTS 20000-29999 overlaps the kernel's ephemeral port")
    with caplog.at_level(logging.WARNING, logger="app.startup"):
        startup.warn_slot_ports(settings)
    assert [r.getMessage() for r in caplog.records] == [check.detail]


def test_the_bench_refuses_ports_in_the_ephemeral_range(kernel_range, capsys, monkeypatch):
    import bench.env

    monkeypatch.setattr(bench.env, "PORTS", None)  # parse sets it from --ports
    kernel_range(*LINUX_DEFAULT)
    with pytest.raises(SystemExit):
        parse(["--ports", "44000-47999", "--only", "scale"])
    assert "--ports 44000-47999 overlaps the kernel's ephemeral port range 32768-60999" in capsys.readouterr().err
    assert parse(["--ports", "12000-15999", "--only", "scale"]).parts == {"scale"}
    kernel_range(10000, 60999)  # the default SLOT_PORTS (20000-29999) inside it too
    with pytest.raises(SystemExit):
        parse(["--only", "scale"])
    assert "the default SLOT_PORTS 20000-29999 overlaps" in capsys.readouterr().err
