"""Placeholder until the QGIS plugin lands."""
print("qgis plugin: not yet present")
