"""The reference platform's web console: one module per part, each with
``add_routes(app, platform)``."""
