"""`python -m cxrsynth`: the `cxrsynth` command."""

import sys

from cxrsynth.cli import main

sys.exit(main())
