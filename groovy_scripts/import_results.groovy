/*
 * her2-qupath: import the results of `her2-qupath batch` into the current image
 * ============================================================================
 *
 * `her2-qupath batch PROJECT` writes, for each scored image,
 *     PROJECT/her2_qupath/<entry ID>/detections.geojson   (tiles or cells)
 *     PROJECT/her2_qupath/<entry ID>/annotations.geojson  (scored regions)
 * and, for the H&E image of an H&E + IHC pair, the same two files in its own
 * folder (the tiles on the H&E slide, Tumor / Non-tumor, and the scored regions).
 * This script adds both to the image they belong to and removes the objects
 * an earlier import (or scoring run) of this product added; your own
 * annotations and detections stay as they are.
 *
 * One image: open it and run the script (Automate > Project scripts... or
 * Shared scripts...). All images: in the script editor choose Run > Run for
 * project, select the images, and QuPath saves each one after the import.
 * Works with QuPath 0.4, 0.5 and 0.6.
 */

import static qupath.lib.gui.scripting.QPEx.*

import groovy.transform.Field
import qupath.lib.io.PathIO

// ---------------------------------------------------------------- settings --
// Folder inside the project that `her2-qupath batch` writes to.
@Field String RESULTS_FOLDER = 'her2_qupath'
// Import the tile/cell detections too (false: only the scored region annotations).
@Field boolean IMPORT_DETECTIONS = true
// Names of every object this product writes start with this marker.
@Field String MARKER = 'her2-qupath'
// ------------------------------------------------------------------------------

class Her2ScriptError extends RuntimeException {
    Her2ScriptError(String message) { super(message) }
}

boolean isOurs(obj) {
    def name = obj.getName()
    return name != null && name.startsWith(MARKER)
}

List readFile(File file) {
    def stream = new FileInputStream(file)
    try {
        return PathIO.readObjectsFromGeoJSON(stream) as List
    } catch (Exception e) {
        throw new Her2ScriptError("cannot read ${file}: ${e.message}. Run her2-qupath batch again to rewrite it.")
    } finally {
        stream.close()
    }
}

void runScript() {
    def entry = getProjectEntry()
    if (entry == null)
        throw new Her2ScriptError('open the image from a QuPath project: results are looked up by its entry ID')
    String dir = buildFilePath(PROJECT_BASE_DIR, RESULTS_FOLDER, entry.getID())
    def files = [new File(dir, 'annotations.geojson')]
    if (IMPORT_DETECTIONS) files << new File(dir, 'detections.geojson')
    if (!files.any { it.isFile() }) {
        println "her2-qupath: no results for '${entry.getImageName()}' in ${dir} (run her2-qupath batch on this project first)"
        return
    }
    List objects = []
    files.findAll { it.isFile() }.each { objects.addAll(readFile(it)) }
    objects.each { obj ->
        def name = obj.getName()
        if (name == null || !name.startsWith(MARKER))
            obj.setName(name ? "${MARKER}: ${name}" : MARKER)
    }
    def earlier = (getAnnotationObjects() + getDetectionObjects()).findAll { isOurs(it) }
    removeObjects(earlier, true)
    addObjects(objects)
    fireHierarchyUpdate()
    println "her2-qupath: '${entry.getImageName()}': added ${objects.size()} objects, replaced ${earlier.size()} earlier ones"
}

try {
    runScript()
} catch (Her2ScriptError e) {
    println "ERROR: her2-qupath: ${e.message}"
}
