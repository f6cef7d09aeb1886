/*
 * her2-qupath: HER2 score of an IHC image with its H&E partner
 * ============================================================
 *
 * Run it on the HER2 IHC image. The H&E image of the same case is taken from
 * the project by name (HE_IMAGE_NAME, or the IHC name with IHC_TAG replaced by
 * HE_TAG). The server registers the two slides, finds tumour on the H&E
 * image (tumour model, or your annotations) and scores the matching IHC
 * tiles. Results are added to the IHC image:
 *   - one detection per tile (or cell), classified "HER2 0" ... "HER2 3+",
 *   - one annotation per scored region with the HER2 score and measurements.
 * Objects this product added earlier are replaced inside the scored regions;
 * your own annotations are never touched. Selected annotations on the IHC
 * image limit scoring to them; with none selected the whole image is scored.
 *
 * Start the server first, on the machine that can read the image files:
 *     her2-qupath serve
 * then run this script from Automate > Shared scripts... (or Project scripts...).
 * Works with QuPath 0.4, 0.5 and 0.6.
 */

import static qupath.lib.gui.scripting.QPEx.*

import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import groovy.transform.Field
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO

import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.time.Duration

// ---------------------------------------------------------------- settings --
// Address of the server started with `her2-qupath serve` (default port 8765).
@Field String SERVER_URL = 'http://127.0.0.1:8765'
// Access token: printed by `her2-qupath serve` when it needs one; '' when it does not.
@Field String TOKEN = ''
// Clinical rule: 'breast' (ASCO/CAP 2018/2023), 'gastric' or 'endometrial'.
@Field String GUIDELINE = 'breast'
// 'pixel' (stained tumour area) or 'cell' (tumour cells with membrane staining).
@Field String LEVEL = 'pixel'
// 'guideline' (clinical rule) or 'paper' (the published tile algorithm).
@Field String AGGREGATION = 'guideline'
// Name of the H&E image in this project; '' = the IHC name with IHC_TAG replaced by HE_TAG.
@Field String HE_IMAGE_NAME = ''
@Field String IHC_TAG = 'HER2'
@Field String HE_TAG = 'HE'
// With no annotation selected: true scores the whole image, false stops.
@Field boolean WHOLE_IMAGE_IF_NOTHING_SELECTED = true
// Seconds between progress checks, and the longest wait in minutes.
@Field double POLL_SECONDS = 1.0
@Field double MAX_WAIT_MINUTES = 120
// Names of every object this product writes start with this marker.
@Field String MARKER = 'her2-qupath'
// ------------------------------------------------------------------------------

class Her2ScriptError extends RuntimeException {
    Her2ScriptError(String message) { super(message) }
}

@Field HttpClient HTTP = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build()

/** Show a problem as one clear message (a dialog in the QuPath window, the log otherwise). */
void showProblem(String message) {
    println "ERROR: her2-qupath: ${message}"
    if (getQuPath() == null) return  // headless: the log line above is the message
    for (String name in ['qupath.fx.dialogs.Dialogs', 'qupath.lib.gui.dialogs.Dialogs']) {  // 0.5+, 0.4
        try {
            Class.forName(name).getMethod('showErrorMessage', String, String).invoke(null, 'HER2 scoring', message)
            return
        } catch (ReflectiveOperationException | LinkageError ignored) {
            // not in this QuPath version: try the next one
        }
    }
}

String serverMessage(HttpResponse response) {
    def body = response.body() ?: ''
    try {
        def err = new JsonSlurper().parseText(body)?.error
        if (err) return "${err.message} (${response.statusCode()} ${err.code})"
    } catch (Exception ignored) { }
    return "HTTP ${response.statusCode()}: ${body.take(300)}"
}

HttpResponse<String> http(String method, String path, String json = null) {
    def builder = HttpRequest.newBuilder(URI.create(SERVER_URL.replaceAll('/+$', '') + path))
            .timeout(Duration.ofSeconds(60))
            .header('Accept', 'application/json')
    if (TOKEN) builder.header('Authorization', 'Bearer ' + TOKEN)
    if (json != null)
        builder.header('Content-Type', 'application/json').method(method, HttpRequest.BodyPublishers.ofString(json))
    else
        builder.method(method, HttpRequest.BodyPublishers.noBody())
    HttpResponse<String> response
    try {
        response = HTTP.send(builder.build(), HttpResponse.BodyHandlers.ofString())
    } catch (IOException e) {
        throw new Her2ScriptError("cannot reach the HER2 server at ${SERVER_URL} (${e.class.simpleName}: ${e.message}). " +
                "Start it with 'her2-qupath serve' and check SERVER_URL at the top of this script.")
    }
    int code = response.statusCode()
    if (code == 401 || code == 403)
        throw new Her2ScriptError("the server refused access: ${serverMessage(response)}. " +
                "Set TOKEN at the top of this script to the token 'her2-qupath serve' printed.")
    if (code >= 400)
        throw new Her2ScriptError("the server could not do it: ${serverMessage(response)}")
    return response
}

/** The current image as the server should open it: a file: URI (or path). */
String imageLocation(server) {
    def uris = []
    try { uris = server.getURIs() as List } catch (MissingMethodException ignored) { }
    if (uris.size() == 1) return uris[0].toString()
    if (uris.size() > 1)
        throw new Her2ScriptError("this image is built from ${uris.size()} files; score one of them on its own")
    return server.getPath()
}

Double pixelSizeMicrons(server) {
    def cal = server.getPixelCalibration()
    if (!cal.hasPixelSizeMicrons()) return null
    double v = cal.getAveragedPixelSizeMicrons()
    return Double.isNaN(v) ? null : v
}

boolean isOurs(obj) {
    def name = obj.getName()
    return name != null && name.startsWith(MARKER)
}

/** QuPath GeoJSON features of the given objects (works for GsonTools' array or collection output). */
List featuresOf(Collection objects) {
    def parsed = new JsonSlurper().parseText(GsonTools.getInstance(false).toJson(objects))
    if (parsed instanceof Map) return (parsed.features ?: [parsed]) as List
    return parsed as List
}

List readObjects(String geojson) {
    def stream = new ByteArrayInputStream(geojson.getBytes('UTF-8'))
    try {
        return PathIO.readObjectsFromGeoJSON(stream) as List
    } finally {
        stream.close()
    }
}

Map submitAndWait(Map request) {
    def created = new JsonSlurper().parseText(http('POST', '/api/v1/jobs', JsonOutput.toJson(request)).body())
    String id = created.id
    println "her2-qupath: job ${id} submitted to ${SERVER_URL}"
    long deadline = System.currentTimeMillis() + (long) (MAX_WAIT_MINUTES * 60000)
    String last = ''
    while (true) {
        def job = new JsonSlurper().parseText(http('GET', "/api/v1/jobs/${id}").body())
        String line = "${job.state} ${Math.round(100 * ((job.progress ?: 0) as double))}%" +
                (job.tiles_total ? " (${job.tiles_done}/${job.tiles_total} tiles)" : '')
        if (line != last) { println "her2-qupath: ${line}"; last = line }
        if (job.state == 'done') return job
        if (job.state == 'failed')
            throw new Her2ScriptError("scoring failed on the server: ${job.error ?: 'no reason given'}")
        if (job.state == 'cancelled')
            throw new Her2ScriptError("the job was cancelled on the server")
        if (System.currentTimeMillis() > deadline) {
            try { http('DELETE', "/api/v1/jobs/${id}") } catch (Her2ScriptError ignored) { }
            throw new Her2ScriptError("no result after ${MAX_WAIT_MINUTES} minutes; the job was cancelled " +
                    "(raise MAX_WAIT_MINUTES for very large regions)")
        }
        Thread.sleep((long) (POLL_SECONDS * 1000))
    }
}

/** Replace earlier results of this product (inside `regions`, or all of them) by `objects`. */
Map replaceResults(List objects, List regions) {
    def earlier = (getAnnotationObjects() + getDetectionObjects()).findAll { isOurs(it) }
    if (regions) {
        earlier = earlier.findAll { obj ->
            def roi = obj.getROI()
            regions.any { it.getROI().contains(roi.getCentroidX(), roi.getCentroidY()) }
        }
    }
    objects.each { obj ->
        def name = obj.getName()
        if (name == null || !name.startsWith(MARKER))
            obj.setName(name ? "${MARKER}: ${name}" : MARKER)
    }
    removeObjects(earlier, true)
    addObjects(objects)
    fireHierarchyUpdate()
    return [removed: earlier.size(), added: objects.size()]
}

String baseName(String name) {
    return name.replaceAll('(?i)\\.(ome\\.tiff?|[a-z0-9]{2,5})$', '')
}

/** The project entry of the H&E partner and its image location. */
Map findPartner() {
    def project = getProject()
    def entry = getProjectEntry()
    if (project == null || entry == null)
        throw new Her2ScriptError('open the IHC image from a QuPath project: the H&E partner is looked up in it')
    String ihcName = entry.getImageName()
    String wanted = HE_IMAGE_NAME ?: ihcName.replace(IHC_TAG, HE_TAG)
    if (!HE_IMAGE_NAME && wanted == ihcName)
        throw new Her2ScriptError("the image name '${ihcName}' does not contain IHC_TAG '${IHC_TAG}'; " +
                "set HE_IMAGE_NAME at the top of this script")
    def images = project.getImageList()
    def he = images.find { it.getImageName() == wanted } ?: images.find { baseName(it.getImageName()) == baseName(wanted) }
    if (he == null)
        throw new Her2ScriptError("no image named '${wanted}' in this project; set HE_IMAGE_NAME at the top of this script")
    def uris = []
    try { uris = he.getURIs() as List } catch (MissingMethodException ignored) { uris = he.getServerURIs() as List }
    if (uris.size() != 1)
        throw new Her2ScriptError("the H&E image '${he.getImageName()}' is built from ${uris.size()} files; use a single-file image")
    return [name: he.getImageName(), location: uris[0].toString()]
}

void runScript() {
    def imageData = getCurrentImageData()
    if (imageData == null) throw new Her2ScriptError('open an image first')
    def server = imageData.getServer()
    def selected = getSelectedObjects().findAll { it.isAnnotation() } as List
    def regions = selected.findAll { !isOurs(it) } as List
    if (selected && !regions)
        throw new Her2ScriptError('the selected annotations are results of an earlier run; select the region you drew')
    if (!regions && !WHOLE_IMAGE_IF_NOTHING_SELECTED)
        throw new Her2ScriptError('select one or more annotations to score (or set WHOLE_IMAGE_IF_NOTHING_SELECTED = true)')
    def partner = findPartner()
    def request = [
            ihc    : imageLocation(server),
            he     : partner.location,
            ihc_mpp: pixelSizeMicrons(server),
            rois   : regions ? [type: 'FeatureCollection', features: featuresOf(regions)] : null,
            // the regions were drawn on this (IHC) image: the server maps them to the H&E slide
            roi_space: 'ihc',
            options: [guideline: GUIDELINE, level: LEVEL, aggregation: AGGREGATION],
    ]
    println "her2-qupath: scoring ${regions ? regions.size() + ' annotation(s)' : 'the whole image'} of ${request.ihc} with H&E ${partner.name}"
    def job = submitAndWait(request)
    def detections = readObjects(http('GET', "/api/v1/jobs/${job.id}/detections").body())
    def annotations = readObjects(http('GET', "/api/v1/jobs/${job.id}/annotations").body())
    def counts = replaceResults(detections + annotations, regions)
    def result = new JsonSlurper().parseText(http('GET', "/api/v1/jobs/${job.id}/result").body())
    def summary = result.summary ?: result
    println "her2-qupath: HER2 ${summary.her2_score} (${GUIDELINE}); added ${counts.added} objects, " +
            "replaced ${counts.removed} earlier ones"
}

try {
    runScript()
} catch (Her2ScriptError e) {
    showProblem(e.message)
}
