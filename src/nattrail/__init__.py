"""nattrail: daemons and command-line tools of the nattrail NAT router appliance."""

__version__ = "0.1.0"
