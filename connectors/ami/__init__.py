"""Asterisk Manager Interface connector: codec, normaliser, link."""
