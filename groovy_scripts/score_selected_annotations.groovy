/*
 * her2-qupath: HER2 score of the selected annotations (or of the whole image)
 * ===========================================================================
 *
 * Sends the current image (its path/URI and pixel size) and the selected
 * annotations to a running her2-qupath server, waits for the job while the
 * progress is written to the log, and adds the results to the image:
 *   - one detection per tile (or cell), classified "HER2 0" ... "HER2 3+",
 *   - one annotation per scored region with the HER2 score and measurements.
 * Each selected region is scored as its own job. Re-running replaces exactly
 * the objects this product added for that region (their names end in
 * "#<region id>"; "#image" for the whole image) and never duplicates them;
 * results of `her2-qupath batch` (no tag) are replaced inside the region.
 * Your own objects are never touched. Stopping the script (Kill running
 * script) cancels its job on the server. An image of type "Not set" is set
 * to Brightfield (H-DAB).
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
// The access token (printed by `her2-qupath serve` when it needs one) is never written here:
// set the environment variable HER2_QUPATH_TOKEN, or run set_server_token.groovy once.
// Clinical rule: 'breast' (ASCO/CAP 2018/2023), 'gastric' or 'endometrial'.
@Field String GUIDELINE = 'breast'
// 'pixel' (stained tumour area) or 'cell' (tumour cells with membrane staining).
@Field String LEVEL = 'pixel'
// 'guideline' (clinical rule) or 'paper' (the published tile algorithm).
@Field String AGGREGATION = 'guideline'
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

/** The access token: $HER2_QUPATH_TOKEN, else the one set_server_token.groovy stored ('' = none). */
String accessToken() {
    String env = System.getenv('HER2_QUPATH_TOKEN')
    if (env?.trim()) return env.trim()
    return java.util.prefs.Preferences.userRoot().node('her2-qupath').get('token', '')
}

HttpResponse<String> http(String method, String path, String json = null) {
    def builder = HttpRequest.newBuilder(URI.create(SERVER_URL.replaceAll('/+$', '') + path))
            .timeout(Duration.ofSeconds(60))
            .header('Accept', 'application/json')
    String token = accessToken()
    if (token) builder.header('Authorization', 'Bearer ' + token)
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
                "Store the token 'her2-qupath serve' printed with set_server_token.groovy " +
                "(or set the environment variable HER2_QUPATH_TOKEN).")
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

/** Cancel a job on the server, even from an interrupted thread; failures are only logged. */
void cancelJob(String id) {
    boolean interrupted = Thread.interrupted()  // clear the flag so the request can be sent
    try {
        http('DELETE', "/api/v1/jobs/${id}")
        println "her2-qupath: job ${id} cancelled on the server"
    } catch (Exception e) {
        println "her2-qupath: could not cancel job ${id}: ${e.message}"
    } finally {
        if (interrupted) Thread.currentThread().interrupt()
    }
}

Map submitAndWait(Map request) {
    def created
    try {
        created = new JsonSlurper().parseText(http('POST', '/api/v1/jobs', JsonOutput.toJson(request)).body())
    } catch (InterruptedException e) {
        throw new Her2ScriptError('interrupted while submitting the job; check the server status page for it')
    }
    String id = created.id
    println "her2-qupath: job ${id} submitted to ${SERVER_URL}"
    long deadline = System.currentTimeMillis() + (long) (MAX_WAIT_MINUTES * 60000)
    String last = ''
    boolean ended = false  // done, failed or cancelled on the server: nothing to cancel
    try {
        while (true) {
            def job = new JsonSlurper().parseText(http('GET', "/api/v1/jobs/${id}").body())
            String line = "${job.state} ${Math.round(100 * ((job.progress ?: 0) as double))}%" +
                    (job.tiles_total ? " (${job.tiles_done}/${job.tiles_total} tiles)" : '')
            if (line != last) { println "her2-qupath: ${line}"; last = line }
            ended = job.state in ['done', 'failed', 'cancelled']
            if (job.state == 'done') return job
            if (job.state == 'failed')
                throw new Her2ScriptError("scoring failed on the server: ${job.error ?: 'no reason given'}")
            if (job.state == 'cancelled')
                throw new Her2ScriptError("the job was cancelled on the server")
            if (System.currentTimeMillis() > deadline)
                throw new Her2ScriptError("no result after ${MAX_WAIT_MINUTES} minutes; the job was cancelled " +
                        "(raise MAX_WAIT_MINUTES for very large regions)")
            Thread.sleep((long) (POLL_SECONDS * 1000))
        }
    } catch (InterruptedException e) {
        throw new Her2ScriptError("interrupted: job ${id} was cancelled on the server")
    } finally {
        if (!ended) cancelJob(id)
    }
}

/** The object's ID (QuPath 0.4-0.5: getID(), later getId()). */
String objectId(obj) {
    for (String method in ['getID', 'getId']) {
        if (obj.metaClass.respondsTo(obj, method)) return obj."${method}"().toString()
    }
    return Integer.toHexString(System.identityHashCode(obj))
}

/** The tag that ties results to the region they were scored for ('image': the whole image). */
String tagOf(region) {
    return region == null ? 'image' : objectId(region).replaceAll('-', '').take(8)
}

/** Replace this product's earlier results for `region` (null: the whole image) by `objects`. */
Map replaceResults(List objects, region) {
    String suffix = " #${tagOf(region)}"
    def earlier = (getAnnotationObjects() + getDetectionObjects()).findAll { obj ->
        if (!isOurs(obj)) return false
        if (region == null) return true  // the whole image replaces every earlier result
        String name = obj.getName()
        if (name.endsWith(suffix)) return true
        if (name ==~ /.* #([0-9a-f]{8}|image)$/) return false  // another region's, or the whole image's
        def roi = obj.getROI()  // untagged (her2-qupath batch): replaced inside the region
        return region.getROI().contains(roi.getCentroidX(), roi.getCentroidY())
    }
    objects.each { obj ->
        String name = obj.getName()
        obj.setName((name == null ? MARKER : (name.startsWith(MARKER) ? name : "${MARKER}: ${name}")) + suffix)
    }
    removeObjects(earlier, true)
    addObjects(objects)
    fireHierarchyUpdate()
    return [removed: earlier.size(), added: objects.size()]
}

/** Results need colour deconvolution: an image of type "Not set" becomes Brightfield (H-DAB),
 *  with the stain vectors the server used (QuPath's own stain string, from the summary). */
void ensureBrightfield(imageData, Map summary) {
    def type = imageData.getImageType()  // an enum; its text is the display name, "Not set"
    if (type == null || type.name() == 'UNSET') {
        setImageType('BRIGHTFIELD_H_DAB')
        String stains = summary?.provenance?.stain_vectors_qupath
        if (stains) setColorDeconvolutionStains(stains)
        println 'her2-qupath: image type set to Brightfield (H-DAB)' + (stains ? ' with the stain vectors used' : '')
    }
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
    String location = imageLocation(server)
    Double mpp = pixelSizeMicrons(server)
    Map last = [:]
    for (region in (regions ?: [null])) {
        def request = [
                ihc    : location,
                ihc_mpp: mpp,
                rois   : region == null ? null : [type: 'FeatureCollection', features: featuresOf([region])],
                options: [guideline: GUIDELINE, level: LEVEL, aggregation: AGGREGATION],
        ]
        String what = region == null ? 'the whole image' : "region '${region.getName() ?: tagOf(region)}'"
        println "her2-qupath: scoring ${what} of ${location}"
        def job = submitAndWait(request)
        def detections = readObjects(http('GET', "/api/v1/jobs/${job.id}/detections").body())
        def annotations = readObjects(http('GET', "/api/v1/jobs/${job.id}/annotations").body())
        def counts = replaceResults(detections + annotations, region)
        def result = new JsonSlurper().parseText(http('GET', "/api/v1/jobs/${job.id}/result").body())
        def summary = result.summary ?: result
        println "her2-qupath: ${what}: HER2 ${summary.her2_score} (${GUIDELINE}); added ${counts.added} objects, " +
                "replaced ${counts.removed} earlier ones"
        last = summary as Map
    }
    ensureBrightfield(imageData, last)
}

try {
    runScript()
} catch (Her2ScriptError e) {
    showProblem(e.message)
}
