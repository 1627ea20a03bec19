"""Wire formats of H.627.2 as pure functions and data types: no sockets, no clocks."""
