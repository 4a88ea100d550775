"""``python -m probattr_monitor.cli`` runs the ``probattr`` command."""

import sys

from probattr_monitor.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
