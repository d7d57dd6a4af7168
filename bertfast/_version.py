"""The package version, in a module of its own so that the commands can report it without
importing the public API in ``bertfast/__init__.py`` (and with it everything)."""

__version__ = "0.1.0"
