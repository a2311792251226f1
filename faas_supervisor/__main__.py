"""`python -m faas_supervisor` is the `faas-supervisor` command."""

import sys

from faas_supervisor.cli import main

sys.exit(main())
