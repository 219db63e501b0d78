"""retrofit: convert Debian/Ubuntu servers in place into OSTree systems."""

__version__ = "0.1.0"
