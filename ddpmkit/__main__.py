"""``python -m ddpmkit`` (also what ``torchrun -m ddpmkit`` runs)."""

import sys

from ddpmkit.cli import main

sys.exit(main())
