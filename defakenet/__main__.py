"""`python -m defakenet …` is the `defakenet` command (job entrypoints use it where PATH may differ)."""

import sys

from defakenet.cli import main

sys.exit(main())
