"""The HTTP side: health, metrics and (later) the REST API and web UI."""
