"""The status report as text: one table per machine, then why each process that is not ready is
not, what could not be read, and the summary line. Pure formatting of ``deploys.core.status``."""

from __future__ import annotations

from deploys.core.status import HostStatus, ProcessStatus

COLUMNS = ("UNIT", "STATE", "PID", "UPTIME", "RSS", "LISTENING", "READY")
NOT_PLANNED = "NOT PLANNED"


def status_lines(status: HostStatus) -> list[str]:
    """The report of one machine, line by line: the table (planned processes in plan order, then
    units of ours the plan does not have), the reasons, read errors, and the summary line."""
    rows = [_cells(row) for row in (*status.planned, *status.unplanned)]
    widths = [max(len(cells[i]) for cells in (COLUMNS, *rows)) for i in range(len(COLUMNS))]
    right = {2, 3, 4}  # numbers line up on the right

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [f"{status.machine}:", line(COLUMNS), *(line(cells) for cells in rows)]
    not_ready = [row for row in status.planned if not row.ready]
    if not_ready:
        lines.append("Not ready:")
        lines += [f"  {row.unit}: {row.problem}" for row in not_ready]
    if status.unplanned:
        lines.append(
            f"{NOT_PLANNED}: loaded or running, but not in the plan (a deploy stops and disables "
            "such worker instances)"
        )
    if status.errors:
        lines.append("Could not read:")
        lines += [f"  {error}" for error in status.errors]
    lines.append(f"{status.machine}: {status.summary}")
    return lines


def _cells(row: ProcessStatus) -> tuple[str, ...]:
    ready = NOT_PLANNED if not row.planned else "yes" if row.ready else "no"
    return (
        row.unit,
        f"{row.active_state} ({row.sub_state})" if row.sub_state else row.active_state,
        "-" if row.pid is None else str(row.pid),
        "-" if row.uptime is None else duration(row.uptime),
        "-" if row.rss is None else size(row.rss),
        listening(row.listening) or "-",
        ready,
    )


def duration(seconds: int) -> str:
    """``45s``, ``12m03s``, ``5h07m``, ``3d04h``: the two largest units."""
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def size(octets: int) -> str:
    """Binary units, three significant digits: ``812 KiB``, ``9.4 MiB``, ``1.25 GiB``."""
    value = float(octets)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    if unit == "B":
        return f"{octets} B"
    return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"


def listening(addresses: tuple[str, ...]) -> str:
    """``127.0.0.1:8008,9093 [::1]:8008``: ports grouped by address, each sorted."""
    ports: dict[str, list[int]] = {}
    for address in addresses:
        host, _, port = address.rpartition(":")
        ports.setdefault(host, []).append(int(port) if port.isdigit() else 0)
    return " ".join(f"{host}:{','.join(map(str, sorted(p)))}" for host, p in ports.items())
