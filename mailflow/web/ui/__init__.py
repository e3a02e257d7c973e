"""The web UI: server-rendered pages (Jinja2, htmx) under ``/ui``; see SKELETON.md."""
