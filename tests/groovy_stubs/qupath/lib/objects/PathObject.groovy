package qupath.lib.objects

/** Stand-in for QuPath's PathObject: a GeoJSON feature with the accessors the scripts use. */
class PathObject {
    String type = 'annotation'
    String name
    Object classification  // String or Map(name/names, color) as in QuPath GeoJSON
    Map geometry
    Map measurements = [:]
    String id = UUID.randomUUID().toString()
    Map nucleusGeometry

    static PathObject fromFeature(Map f) {
        Map p = (f.properties ?: [:]) as Map
        def c = p.classification
        if (c instanceof Map && (c.name || c.names) && c.color == null)
            throw new IllegalArgumentException("classification ${c} has a name but no color (QuPath refuses it)")
        String t = (p.objectType ?: 'annotation') as String
        if (!(t in ['annotation', 'detection', 'tile', 'cell']))
            throw new IllegalArgumentException("unknown objectType ${t}")
        if (f.type != 'Feature' || !(f.geometry instanceof Map))
            throw new IllegalArgumentException("not a GeoJSON Feature with a geometry: ${f}")
        return new PathObject(type: t, name: p.name, classification: c, geometry: f.geometry as Map,
                measurements: (p.measurements ?: [:]) as Map, id: (f.id ?: UUID.randomUUID().toString()) as String,
                nucleusGeometry: p.nucleusGeometry ?: f.nucleusGeometry)
    }

    Map toFeature() {
        Map props = [objectType: type]
        if (name != null) props.name = name
        if (classification != null) props.classification = classification
        if (measurements) props.measurements = measurements
        return [type: 'Feature', id: id, geometry: geometry, properties: props]
    }

    String getName() { name }
    void setName(String n) { name = n }
    boolean isAnnotation() { type == 'annotation' }
    boolean isDetection() { type != 'annotation' }
    String getPathClass() {
        if (classification instanceof Map) return (classification.name ?: (classification.names as List).join(': '))
        return classification
    }
    StubROI getROI() { new StubROI(geometry) }
}

/** Polygon ROI with the two calls the scripts use. */
class StubROI {
    List<List<List<Double>>> rings = []

    StubROI(Map geometry) {
        if (geometry.type == 'Polygon') rings << (geometry.coordinates[0] as List)
        else if (geometry.type == 'MultiPolygon') geometry.coordinates.each { rings << (it[0] as List) }
        else if (geometry.type == 'Point') rings << [geometry.coordinates as List]
        else throw new IllegalArgumentException("unsupported geometry ${geometry.type}")
    }

    double getCentroidX() { def pts = rings.flatten().collate(2); pts.sum { it[0] as double } / pts.size() }
    double getCentroidY() { def pts = rings.flatten().collate(2); pts.sum { it[1] as double } / pts.size() }

    boolean contains(double x, double y) {
        rings.any { ring ->
            boolean inside = false
            int n = ring.size()
            for (int i = 0; i < n; i++) {
                int j = (i + n - 1) % n
                double xi = ring[i][0], yi = ring[i][1], xj = ring[j][0], yj = ring[j][1]
                if (((yi > y) != (yj > y)) && (x < (xj - xi) * (y - yi) / (yj - yi) + xi)) inside = !inside
            }
            inside
        }
    }
}
