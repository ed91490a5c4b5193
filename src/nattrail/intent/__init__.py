"""The controller's side of nattrail: inventory intent parsed, validated and compiled into what the roles'
templates print. Ansible reaches it through the thin plugins in ``filter_plugins/``; the tests and the
benchmarks import it as ``nattrail.intent``. Nothing here runs on a router.
"""
