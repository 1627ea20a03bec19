"""Clients of the platform's interfaces (Vs, Vd, Vr, uploads): asyncio and I/O over the
wire layer; every HTTP client comes from :func:`hss_pu.clients.http.platform_http`."""
