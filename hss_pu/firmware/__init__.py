"""Firmware upgrade (issue 12): key files and bundle files here; the format and the checks
are pure, in :mod:`hss_pu.wire.firmware`."""
