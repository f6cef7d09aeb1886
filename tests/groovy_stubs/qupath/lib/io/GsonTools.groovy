package qupath.lib.io

import groovy.json.JsonOutput

/** Stand-in for QuPath's GsonTools: serialises objects as a JSON array of Features. */
class GsonTools {
    boolean pretty
    static GsonTools getInstance(boolean pretty = false) { new GsonTools(pretty: pretty) }
    String toJson(Object objects) {
        def out = (objects as Collection).collect { it.toFeature() }
        return JsonOutput.toJson(out)
    }
}
