"""``hss-pu platform ...``: run the reference platform, and call devices through it."""

from __future__ import annotations

import argparse


def add_platform_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("platform", help="the reference platform (serve, call)")


def run_platform_command(args: argparse.Namespace) -> int:
    raise SystemExit("hss-pu platform: not implemented yet")
