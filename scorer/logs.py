"""One logging setup for every ``rallycast`` entry point (``up``, ``broker``, ``scorer``,
``viewer``, ``buttons``): one format, one place that turns the ``log_level`` setting into a
level.

    setup_logging("INFO")   # at the start of a command's main(), after load_settings

Lines look like ``2026-11-29 23:14:05,123 INFO rallycast.broker: broker listening on ...``
(local time, level, logger name, message). Libraries' own chatter is trimmed where the library
is started (``broker.server.quiet_library_loggers``, ``viewer.server.uvicorn_server``).
"""

from __future__ import annotations

import logging

from scorer.config import LOG_LEVELS, ConfigError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr in :data:`FORMAT` at ``level`` (one of DEBUG, INFO, WARNING, ERROR,
    CRITICAL; any case). A handler already on the root logger (an embedding program's, a test
    runner's) is kept and no second one is added; the level is set either way. Raises
    ConfigError for an unknown level."""
    name = str(level).strip().upper()
    if name not in LOG_LEVELS:
        raise ConfigError(f"setting 'log_level' = {level!r}: use one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(format=FORMAT)
    logging.getLogger().setLevel(name)
