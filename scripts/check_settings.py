"""Check the service's settings in this environment as a container would on start.

`make run` calls it before `chalice local`, so that a malformed setting (REVIEW_INTERVAL=abc) ends
the command with the one sentence naming the variable, not a traceback.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chalicelib import settings  # noqa: E402


def main() -> int:
    try:
        settings.load(os.environ, settings.APP_DIR)
    except settings.SettingsError as error:
        print(f"make run: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
