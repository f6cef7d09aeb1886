package qupath.lib.io

import groovy.json.JsonSlurper
import qupath.lib.objects.PathObject

/** Stand-in for QuPath's PathIO: GeoJSON in, objects out. */
class PathIO {
    static List<PathObject> readObjectsFromGeoJSON(InputStream stream) {
        def data = new JsonSlurper().parse(new InputStreamReader(stream, 'UTF-8'))
        List features
        if (data instanceof List) features = data
        else if (data.type == 'FeatureCollection') features = data.features as List
        else if (data.type == 'Feature') features = [data]
        else throw new IOException("not QuPath GeoJSON: ${data.getClass()}")
        return features.collect { PathObject.fromFeature(it as Map) }
    }
}
