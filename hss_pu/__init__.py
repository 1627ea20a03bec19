"""hss-pu: the premises-unit agent for ITU-T H.627.2 home surveillance platforms."""

__version__ = "0.1.0"
