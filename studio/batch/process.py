"""``python -m studio.batch.process FD INDEX``: a local batch worker process (the pool
starts it with one end of a socket pair as FD)."""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection

from studio.batch.worker import local_main

if __name__ == "__main__":
    local_main(Connection(int(sys.argv[1])), int(sys.argv[2]), {})
