"""Test helpers that run real peers on loopback (no tc netem in this kernel)."""
