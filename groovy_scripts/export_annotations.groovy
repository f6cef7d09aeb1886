/*
 * her2-qupath: export this image's annotations for `her2-qupath batch`
 * ===================================================================
 *
 * Writes the annotations you drew (not the ones this product added) as
 * GeoJSON to
 *     PROJECT/her2_qupath/<entry ID>/rois.geojson
 * which is where `her2-qupath batch PROJECT` looks for the regions to score
 * when QuPath is not installed on the machine that runs it. With
 * `--roi-class Tumor` only annotations classified Tumor are scored.
 *
 * One image: open it and run the script (Automate > Project scripts... or
 * Shared scripts...). All images: Run > Run for project in the script editor.
 * An image without annotations gets no file (an older one is removed), so
 * batch then scores the whole image.
 * Works with QuPath 0.4, 0.5 and 0.6.
 */

import static qupath.lib.gui.scripting.QPEx.*

import groovy.transform.Field

// ---------------------------------------------------------------- settings --
// Folder inside the project that `her2-qupath batch` reads from and writes to.
@Field String RESULTS_FOLDER = 'her2_qupath'
// Export only annotations of this class (e.g. 'Tumor'); '' exports all of them.
@Field String ONLY_CLASS = ''
// Names of every object this product writes start with this marker.
@Field String MARKER = 'her2-qupath'
// ------------------------------------------------------------------------------

boolean isOurs(obj) {
    def name = obj.getName()
    return name != null && name.startsWith(MARKER)
}

boolean hasClass(obj, String wanted) {
    def pc = obj.getPathClass()
    if (pc == null) return false
    return pc.toString() == wanted || pc.toString().split(':')*.trim().contains(wanted)
}

def entry = getProjectEntry()
if (entry == null) {
    println 'ERROR: her2-qupath: open the image from a QuPath project: the file is named by its entry ID'
    return
}
def annotations = getAnnotationObjects().findAll { !isOurs(it) && (!ONLY_CLASS || hasClass(it, ONLY_CLASS)) }
String dir = buildFilePath(PROJECT_BASE_DIR, RESULTS_FOLDER, entry.getID())
def file = new File(dir, 'rois.geojson')
if (annotations.isEmpty()) {
    if (file.isFile()) file.delete()
    println "her2-qupath: '${entry.getImageName()}' has no annotations${ONLY_CLASS ? ' of class ' + ONLY_CLASS : ''} to export"
    return
}
mkdirs(dir)
exportObjectsToGeoJson(annotations, file.getPath(), 'FEATURE_COLLECTION')
println "her2-qupath: exported ${annotations.size()} annotation(s) of '${entry.getImageName()}' to ${file}"
