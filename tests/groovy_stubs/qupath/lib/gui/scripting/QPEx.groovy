package qupath.lib.gui.scripting

import groovy.json.JsonOutput
import qupath.lib.objects.PathObject

/** Stand-in for QuPath's QPEx static script API; records what a script does. */
class QPEx {
    static final String PROJECT_BASE_DIR = '{%PROJECT}'
    static Map state = [:]
    static List<PathObject> hierarchy = []
    static List<PathObject> selected = []
    static List<Map> added = []
    static List<Map> removed = []
    static List<Map> exports = []
    static int updates = 0
    static String imageType = null  // set by setImageType
    static String stains = null  // set by setColorDeconvolutionStains

    static void load(Map s) {
        state = s
        hierarchy = ((s.objects ?: []) as List).collect { PathObject.fromFeature(it as Map) }
        selected = hierarchy.findAll { it.id in (s.selected_ids ?: []) }
    }

    static Map record() {
        [added: added, removed: removed, exports: exports, updates: updates,
         hierarchy: hierarchy.collect { it.toFeature() }, image_type: imageType, stains: stains]
    }

    static Object getQuPath() { null }
    static Object getCurrentImageData() {
        state.no_image ? null : new StubImageData(server: getCurrentServer(), type: imageType ?: state.image_type ?: 'UNSET')
    }
    static void setImageType(String type) { imageType = type }
    static void setColorDeconvolutionStains(String text) { stains = text }
    static Object getCurrentServer() { new StubServer(state) }
    static Collection<PathObject> getSelectedObjects() { new ArrayList(selected) }
    static Collection<PathObject> getAnnotationObjects() { hierarchy.findAll { it.isAnnotation() } }
    static Collection<PathObject> getDetectionObjects() { hierarchy.findAll { it.isDetection() } }
    static void addObjects(Collection objs) { objs.each { hierarchy << it; added << it.toFeature() } }
    static void removeObjects(Collection objs, boolean keepChildren) {
        def ids = objs*.id as Set
        hierarchy.findAll { it.id in ids }.each { removed << it.toFeature() }
        hierarchy.removeAll { it.id in ids }
        selected.removeAll { it.id in ids }
    }
    static void fireHierarchyUpdate() { updates++ }
    static Object getProjectEntry() { state.entry_id == null ? null : new StubEntry(id: state.entry_id as String, name: state.image_name, uri: state.image_uri) }
    static Object getProject() {
        state.project_dir == null ? null : new StubProject(entries: ((state.project_images ?: []) as List).collect {
            new StubEntry(id: it.id as String, name: it.name, uri: it.uri, metadata: (it.metadata ?: [:]) as Map,
                    objects: ((it.objects ?: []) as List).collect { f -> PathObject.fromFeature(f as Map) }) })
    }
    static String buildFilePath(String... parts) {
        def p = parts.collect { it == PROJECT_BASE_DIR ? (state.project_dir as String) : it }
        return new File(p.join(File.separator)).path
    }
    static boolean mkdirs(String path) { new File(path).mkdirs(); true }
    static void exportObjectsToGeoJson(Collection objs, String path, String... options) {
        def fc = [type: 'FeatureCollection', features: objs.collect { it.toFeature() }]
        new File(path).text = JsonOutput.toJson(options.contains('FEATURE_COLLECTION') ? fc : fc.features)
        exports << [path: path, n: objs.size(), options: options as List]
    }
}

/** QuPath's ImageData.ImageType: an enum whose text is the display name ("Not set"). */
enum StubImageType {
    UNSET('Not set'), BRIGHTFIELD_H_E('Brightfield (H&E)'), BRIGHTFIELD_H_DAB('Brightfield (H-DAB)'),
    BRIGHTFIELD_OTHER('Brightfield (other)'), FLUORESCENCE('Fluorescence')
    final String text
    StubImageType(String text) { this.text = text }
    String toString() { text }
}

class StubImageData {
    Object server
    String type = 'UNSET'
    List<PathObject> objects = []
    Object getServer() { server }
    StubImageType getImageType() { StubImageType.valueOf(type ?: 'UNSET') }
    Object getHierarchy() { new StubHierarchy(objects: objects) }
}

class StubHierarchy {
    List<PathObject> objects
    Collection<PathObject> getAnnotationObjects() { objects.findAll { it.isAnnotation() } }
}

class StubServer {
    Map state
    StubServer(Map s) { state = s }
    Collection<URI> getURIs() { [new URI(state.image_uri as String)] }
    String getPath() { state.image_uri }
    Object getPixelCalibration() { new StubCalibration(size: state.pixel_size as Double) }
}

class StubCalibration {
    Double size
    boolean hasPixelSizeMicrons() { size != null }
    double getAveragedPixelSizeMicrons() { size == null ? Double.NaN : size }
}

class StubEntry {
    String id, name, uri
    Map metadata = [:]
    List<PathObject> objects = []
    String getID() { id }
    String getImageName() { name }
    Map getMetadataMap() { metadata }
    Collection<URI> getURIs() { [new URI(uri)] }
    Object readImageData() { new StubImageData(objects: objects) }
}

class StubProject {
    List<StubEntry> entries
    List<StubEntry> getImageList() { entries }
}
