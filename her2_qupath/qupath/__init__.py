"""QuPath interoperability: GeoJSON objects and projects."""
