"""Two fixed loopback ports ("slots") per app and phase, allocated once and kept.

The router is configured once per app+phase with both slots; deployments alternate between
them, so switching versions never reconfigures the router (see app.adapters.router).
Ports come in pairs (LOW+2k, LOW+2k+1) from SLOT_PORTS, so the unique port_a column alone
keeps two phases from ever sharing a port, even when two workers allocate at once.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.adapters.router import Slots
from app.exceptions import DeployFailed
from app.models import PhaseSlots


def find_slots(session: Session, app_id: int, phase: str) -> Slots | None:
    row = session.scalar(select(PhaseSlots).where(PhaseSlots.app_id == app_id, PhaseSlots.phase == phase))
    return Slots(row.port_a, row.port_b) if row is not None else None


def phase_slots(session: Session, app_id: int, phase: str, port_range: tuple[int, int]) -> Slots:
    """The slots of this app and phase, allocated on first use (committed with `session`).

    A new pair is picked at random among the free ones, so two installations (or test runs)
    sharing a range rarely reach for the same pair; pairs already allocated, or with a port
    some program is bound to on 127.0.0.1 right now, are skipped.
    """
    found = find_slots(session, app_id, phase)
    if found is not None:
        return found
    low, high = port_range
    firsts = list(range(low, high, 2))  # high itself is used as a pair's second port at most
    start = random.randrange(len(firsts)) if firsts else 0
    taken = set(session.scalars(select(PhaseSlots.port_a)).all())
    taken |= set(session.scalars(select(PhaseSlots.port_b)).all())
    for index in range(len(firsts)):
        port_a = firsts[(start + index) % len(firsts)]
        port_b = port_a + 1
        if port_a in taken or port_b in taken or not (_free(port_a) and _free(port_b)):
            continue
        try:
            with session.begin_nested():
                session.add(PhaseSlots(app_id=app_id, phase=phase, port_a=port_a, port_b=port_b))
        except IntegrityError:
            found = find_slots(session, app_id, phase)
            if found is not None:  # allocated meanwhile by another worker
                return found
            taken.update((port_a, port_b))  # just taken for another phase
            continue
        return Slots(port_a, port_b)
    raise DeployFailed(f"no free pair of slot ports left in SLOT_PORTS {low}-{high}")


def _free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` (nor on all addresses) right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: Where Linux keeps the range it takes outgoing connections' local ports from.
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int] | None:
    """The kernel's ephemeral port range, both ends included (None: not Linux, or unreadable)."""
    try:
        low, high = (int(part) for part in EPHEMERAL_PORTS.read_text().split())
    except (OSError, ValueError):
        return None
    return low, high


def ephemeral_overlap(setting: str, ports: tuple[int, int], ephemeral: tuple[int, int] | None) -> str | None:
    """One line when `ports` (the range `setting` names) overlaps the kernel's ephemeral range:
    any outgoing connection on the host can hold one of those ports, and a deploy that needs it
    then fails with "port taken" (8 of 598 in the scale bench did)."""
    if ephemeral is None or ports[1] < ephemeral[0] or ports[0] > ephemeral[1]:
        return None
    return (f"{setting} {ports[0]}-{ports[1]} overlaps the kernel's ephemeral port range {ephemeral[0]}-{ephemeral[1]} "
            f"({EPHEMERAL_PORTS}): outgoing connections take ports from it, and a deploy whose slot port one holds "
            f"fails; choose a range below {ephemeral[0]} or above {ephemeral[1]}")
