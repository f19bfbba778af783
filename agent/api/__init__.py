"""The local HTTP API (JSON) that the CLI and the technologist's console use, the console's
static files, and the security that keeps every other web page and host out of it.

- `routes`: the endpoints; each parses its request into a typed request and calls the
  `agent.station.StationService` protocol, never the daemon.
- `security`: the middleware that checks Host, Origin, content type and the per-install token.
- `server`: uvicorn on a thread, with bounded connections and idle time.
"""

from agent.api.routes import create_app
from agent.api.server import ApiServer

__all__ = ["ApiServer", "create_app"]
