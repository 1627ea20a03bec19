"""Firmware upgrade (issue 12): key files and bundle files, the installed versions and
their trial (slots); the bundle format and the checks are pure, in
:mod:`hss_pu.wire.firmware`."""
