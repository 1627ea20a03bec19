"""Firmware upgrade: installed versions and their trial (slots), bundles."""
