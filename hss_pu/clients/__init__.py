"""Clients of the platform's interfaces (Vs, Vd, Vr): asyncio and I/O over the wire layer."""
