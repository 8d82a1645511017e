"""One worker process of `recsys serve` (started by serving/supervisor.py, not by hand).

It serves the app on the supervisor's listening socket (RECSYS_SOCKET_FD) and, once its version is
loaded, writes `ready <version>` to RECSYS_READY_FD so the supervisor can retire the previous workers.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket

import uvicorn


class _Server(uvicorn.Server):
    """uvicorn's server, plus SIGUSR1: stop accepting connections but keep answering the ones it has.

    The supervisor sends it before SIGTERM when it retires a generation: a connection this worker had
    just accepted would otherwise be closed unanswered by the shutdown."""

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._stop_accepting)
        # only now, with the version loaded and the socket accepting, may the old generation go
        holder = self.config.app.state.holder
        fd = int(os.environ["RECSYS_READY_FD"])
        os.write(fd, f"ready {holder.engine.version if holder.engine else ''}\n".encode())
        os.close(fd)

    def _stop_accepting(self) -> None:
        for server in self.servers:
            server.close()


def main() -> None:
    from serving.main import create_app
    from serving.settings import Settings
    from recsys import logs
    fmt = logs.log_format()                 # the supervisor's --log-format, through RECSYS_LOG_FORMAT
    logs.configure(False, fmt)
    sock_fd = int(os.environ["RECSYS_SOCKET_FD"])
    app = create_app(Settings.from_env())
    access_log = os.environ.get("RECSYS_ACCESS_LOG") == "1"
    server = _Server(uvicorn.Config(app, log_config=logs.uvicorn_config(fmt, access_log),
                                    log_level="info" if access_log else "warning", access_log=access_log))
    server.run(sockets=[socket.socket(fileno=sock_fd)])


if __name__ == "__main__":
    main()
