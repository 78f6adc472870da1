"""dashboard-auth's operator commands (`dashboard-auth --help`); see cli.py. Never deployed to Lambda."""
