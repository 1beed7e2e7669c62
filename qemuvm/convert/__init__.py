"""Conversions between qemuvm profiles and other systems' formats (libvirt domain XML, both ways).

Pure, like profile/: bytes or plain data in, plain data or text out; no filesystem, no subprocess. The
API layer reads the files, asks which NAT networks exist, and writes the results.
"""
