"""Emulators of device firmware that speak the real wire protocol.

They import nothing from drivers/ or agent/: a stub sharing the driver's code would hide its bugs.
"""
