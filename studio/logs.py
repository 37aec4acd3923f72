"""The app's rotating log file: what a user attaches to a bug report.

``studio.log`` in :func:`studio.paths.log_dir` (1 MB, then ``studio.log.1`` ... ``.3``):
the start (version, platform, folders), warnings and errors from Studio and the libraries,
uncaught exceptions with their traceback, and Qt's own warnings. No Qt import here.
"""

from __future__ import annotations

import logging
import logging.handlers
import platform
import sys
import threading
from pathlib import Path

MAX_BYTES = 1_000_000
BACKUPS = 3
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_handler: logging.Handler | None = None


def setup_logging(path: Path | None = None) -> Path | None:
    """Log to the rotating file (once per process); returns its path, or None when the
    folder cannot be written (Studio runs on without a log)."""
    global _handler
    from studio.about import version
    from studio.paths import locations, log_file

    path = path or log_file()
    if _handler is not None:
        return Path(_handler.baseFilename)  # type: ignore[attr-defined]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
    except OSError as exc:
        print(f"studio: no log file ({exc})", file=sys.stderr)
        return None
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    # Libraries' chatter stays out unless it is a warning.
    for noisy in ("PIL", "urllib3", "huggingface_hub", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    _handler = handler

    log = logging.getLogger("studio")
    log.info(
        "Studio %s starting (Python %s, %s)", version(), platform.python_version(), sys.platform
    )
    for what, where in locations():
        log.info("%s: %s", what, where)

    previous = sys.excepthook

    def excepthook(kind, value, tb):
        logging.getLogger("studio").critical("uncaught exception", exc_info=(kind, value, tb))
        previous(kind, value, tb)

    sys.excepthook = excepthook
    previous_thread_hook = threading.excepthook

    def thread_hook(args):
        logging.getLogger("studio").critical(
            "uncaught exception in thread %s",
            args.thread.name if args.thread else "?",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )
        previous_thread_hook(args)

    threading.excepthook = thread_hook
    return path


def install_qt_message_handler() -> None:
    """Route Qt's warnings into the log (they would otherwise go to a console that a
    double-clicked app does not have)."""
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    levels = {
        QtMsgType.QtDebugMsg: logging.DEBUG,
        QtMsgType.QtInfoMsg: logging.INFO,
        QtMsgType.QtWarningMsg: logging.WARNING,
        QtMsgType.QtCriticalMsg: logging.ERROR,
        QtMsgType.QtFatalMsg: logging.CRITICAL,
    }
    qt_log = logging.getLogger("qt")

    def handler(mode, _context, message):
        level = levels.get(mode, logging.WARNING)
        qt_log.log(level, "%s", message)
        if level >= logging.WARNING and sys.stderr is not None:  # a console still sees it
            print(message, file=sys.stderr)

    qInstallMessageHandler(handler)
