"""Ingress providers: protocol adapters in front of one accept service."""
