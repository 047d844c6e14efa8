"""``python -m elastic_entropy.report RUN_DIR...``: the same as ``elastic-entropy report``."""

import sys

from elastic_entropy.report import main

if __name__ == "__main__":
    sys.exit(main())
