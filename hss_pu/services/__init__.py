"""Services: what the camera does (control, live, record, PTZ, alarms...), over the clients."""
