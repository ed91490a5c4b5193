"""What `nattrail who` chooses rather than reads from the log format: tolerances, limits and the spellings
it accepts. docs/who.md lists them ("Tunables"); the log format's own constants stay in ``logs``.
"""

from __future__ import annotations

import re
from datetime import timedelta

# How far apart two start times may be and still be the same connection. An open's "opened" is the
# logger's clock when the event arrived, a close's or a table dump's is the kernel's start time: the same
# connection may differ by the event delay. A real reuse of the same conntrack id and tuple needs a
# reboot, i.e. far more than this.
SAME_START = timedelta(seconds=30)

# --window units: incident reports speak in seconds to days. No weeks or months: "m" is already minutes,
# and a month has no fixed length.
UNITS: dict[str, int] = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

# The widest --window: ten years is more than any router keeps logs for, so no real question is refused,
# while a runaway number is an error rather than a silent "all of time".
MAX_WINDOW = timedelta(days=3660)

# --at is ISO 8601 as people paste it from a report or a log (space or T, optional seconds and fraction,
# Z or an offset with or without its colon) and nothing looser: a day/month order guessed wrong would
# answer about another day without a word.
AT_PATTERN = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)"
    r"\s*(?P<zone>[Zz]|[+-]\d{2}:?\d{2})?$"
)

# --window is one whole number with at most one unit: "1h30m" is refused rather than half read.
WINDOW_PATTERN = re.compile(r"^(?P<count>\d+)\s*(?P<unit>[smhd]?)$", re.IGNORECASE)

# Which files beside the log are its rotated copies: every name logrotate can give it (masq.log.1,
# masq.log.2.gz, dateext's masq.log-20261121[.gz] and dateformat variants with _ or -), so that an old
# question reaches old files; nothing else there (masq.log.tmp, masq.log-copy, an editor's backup).
ROTATED_SUFFIX = r"(?:\.\d+|-\d[\d_-]*)?(?:\.(?:gz|bz2|xz|zst))?"
