"""The HTTP API (Starlette). ``create_app(config)`` in ``meterline.api.app`` wires everything."""
