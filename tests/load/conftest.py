"""Load-test reporting that does not depend on `-s`: the tables are repeated in pytest's summary."""
from __future__ import annotations

REPORTS: list[str] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not REPORTS:
        return
    terminalreporter.section("load report")
    for report in REPORTS:
        for line in report.splitlines():
            terminalreporter.write_line(line)
