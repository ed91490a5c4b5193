"""Names that the compiler, the ruleset's template, the daemons and the commands must agree on.

Stated once here; the rules compiler puts them in the data the template prints (``nat_router_rules``'s
``table``), and the commands take them as their defaults.
"""

from __future__ import annotations

# The one nftables table nattrail owns: `table inet nattrail`. Other tables (Docker's, an admin's) are
# never touched.
FAMILY = "inet"
TABLE = "nattrail"
# Every counter whose name starts so counts one reason a packet was dropped or rejected (`nattrail drops`).
DROP_PREFIX = "drop_"

# Where the package's daemons keep their logs and settings unless the roles say otherwise (the nattrail
# role's nattrail_log_dir and nattrail_config_dir have these defaults).
LOG_DIR = "/var/log/nattrail"
CONFIG_DIR = "/etc/nattrail"
MASQ_LOG = f"{LOG_DIR}/masq.log"
# The masquerade logger's settings: `nattrail who` reads the log path from them.
MASQLOG_CONFIG = f"{CONFIG_DIR}/masqlog.json"
