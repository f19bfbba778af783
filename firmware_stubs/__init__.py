"""Emulators of device firmware that speak the real wire protocol; import nothing from drivers/ or agent/."""
