"""The config file a bench's daemon runs with, written as a camera's would be.

Imported by the bench scripts as ``from benchconfig import ...`` (a script's own
directory is first on its path). The password goes in a file beside the config, both
mode 0600, since the daemon refuses secrets that others can read.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_config"]


def write_config(
    tmp: Path,
    *,
    device: str,
    password: str,
    mac: str,
    profile: str,
    schedule_url: str,
    ca_file: str,
    camera: str,
    storage: str = "",
    sections: str = "",
) -> Path:
    """``tmp/config.toml``; ``camera`` and ``storage`` are TOML lines and ``sections`` whole
    sections (before ``[log]``), each line ending in a newline."""
    pw = tmp / "password"
    pw.write_text(password)
    pw.chmod(0o600)
    cfg = tmp / "config.toml"
    cfg.write_text(
        f"""[device]
id = "{device}"
password_file = "{pw}"
mac = "{mac}"
profile = "{profile}"
[platform]
schedule_url = "{schedule_url}"
ca_file = "{ca_file}"
[camera]
{camera}[storage]
dir = "{tmp / "state"}"
{storage}{sections}[log]
level = "warning"
"""
    )
    cfg.chmod(0o600)
    return cfg
