"""The reference platform: a real H.627.2 platform on loopback, for demos and tests.

It is the peer of every integration test and of ``make run``'s embedded default, so it
speaks the wire formats through the same :mod:`hss_pu.wire` code, over real TLS sockets.
"""
