"""Logging setup shared by the entry points."""
from __future__ import annotations

import logging as std_logging

from absl import logging


def quiet_libraries(prefixes: tuple[str, ...] = ("/orbax/", "/tensorstore/", "/etils/")) -> None:
  """Drops INFO/DEBUG records that come from library internals (Orbax logs every save/load)."""
  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(p in record.pathname for p in prefixes)
  logging.get_absl_logger().addFilter(keep)
