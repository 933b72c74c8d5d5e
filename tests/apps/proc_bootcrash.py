"""A module whose import kills the process: a worker that can never boot (the way a
broken C extension takes a worker down)."""

import os
import signal

os.kill(os.getpid(), signal.SIGKILL)

application = None
