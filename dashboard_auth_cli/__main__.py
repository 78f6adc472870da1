"""`python -m dashboard_auth_cli <command>`: the same as the `dashboard-auth` console script."""
import sys

from dashboard_auth_cli.cli import entry

sys.exit(entry())
