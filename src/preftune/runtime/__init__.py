"""The ground floor: devices, the process group and collectives. ``models``, ``train`` and the recipes
build on it; it imports nothing else of preftune."""
