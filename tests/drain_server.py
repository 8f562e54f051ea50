"""`python tests/drain_server.py MODEL_DIR STEP_DELAY GRACE`: a real server process.

Runs ArBridgeServer.serve_forever (the code `arbridge serve` runs, signal handlers
included) on a port chosen by the OS, with a slowed-down model so a stream is
still in flight when the test sends SIGTERM. Logs 'listening on HOST:PORT'.
"""

import sys
import time

from arbridge import app
from arbridge.app import ArBridgeServer
from arbridge.config import Settings
from arbridge.logs import setup_logging
from arbridge.models.loader import load_model

from tiny_model import slow_down


def main() -> int:
    model_dir, delay, grace = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    setup_logging("INFO")
    settings = Settings(host="127.0.0.1", port=0, model=model_dir, grace_seconds=grace,
                        public_health=True)
    if "--slow-load" in sys.argv:  # a model that takes a minute to load
        def slow_load(*args, **kwargs):
            time.sleep(60)
            return load_model(*args, **kwargs)

        app.load_model = slow_load
        ArBridgeServer(settings).run_until_stopped()
        return 0
    loaded = load_model(model_dir, cache_dir=settings.cache_dir)
    slow_down(loaded.model, delay)
    ArBridgeServer(settings).run_until_stopped(preloaded=loaded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
