/*
 * her2-qupath: what score_selected_annotations.groovy and score_pair.groovy share
 * ================================================================================
 *
 * Server calls, jobs, and the results written into the open image. Keep this file
 * in the same folder as those two scripts (QuPath tells a script its own file, and
 * they load this one from beside it). Run on its own, it does nothing.
 * Works with QuPath 0.4, 0.5 and 0.6.
 */

import static qupath.lib.gui.scripting.QPEx.*

import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO

import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.time.Duration

/** A problem the user can fix: shown as one message, not a stack trace. */
class Her2ScriptError extends RuntimeException {
    Her2ScriptError(String message) { super(message) }
}

/** One scoring session against a running `her2-qupath serve`, with the script's settings. */
class Her2Scoring {
    final String serverUrl
    final Map options  // the scoring options sent with every request (guideline, level, aggregation)
    final double pollSeconds
    final double maxWaitMinutes
    final String marker
    final HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build()

    Her2Scoring(String serverUrl, String guideline, String level, String aggregation, double pollSeconds,
                double maxWaitMinutes, String marker) {
        this.serverUrl = serverUrl
        this.options = [guideline: guideline, level: level, aggregation: aggregation]
        this.pollSeconds = pollSeconds
        this.maxWaitMinutes = maxWaitMinutes
        this.marker = marker
    }

    /** Run the script's work on the open image and the regions selected in it (see
     *  currentImage, selectedRegions); a problem the user can fix becomes one message. */
    void run(Closure work) {
        try {
            work.call(currentImage(), selectedRegions())
        } catch (Her2ScriptError e) {
            showProblem(e.message)
        }
    }

    void fail(String message) { throw new Her2ScriptError(message) }

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

    static String serverMessage(HttpResponse response) {
        def body = response.body() ?: ''
        try {
            def err = new JsonSlurper().parseText(body)?.error
            if (err) return "${err.message} (${response.statusCode()} ${err.code})"
        } catch (Exception ignored) { }
        return "HTTP ${response.statusCode()}: ${body.take(300)}"
    }

    /** The access token: $HER2_QUPATH_TOKEN, else the one set_server_token.groovy stored ('' = none). */
    static String accessToken() {
        String env = System.getenv('HER2_QUPATH_TOKEN')
        if (env?.trim()) return env.trim()
        return java.util.prefs.Preferences.userRoot().node('her2-qupath').get('token', '')
    }

    HttpResponse<String> http(String method, String path, String json = null) {
        def builder = HttpRequest.newBuilder(URI.create(serverUrl.replaceAll('/+$', '') + path))
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
            response = client.send(builder.build(), HttpResponse.BodyHandlers.ofString())
        } catch (IOException e) {
            fail("cannot reach the HER2 server at ${serverUrl} (${e.class.simpleName}: ${e.message}). " +
                    "Start it with 'her2-qupath serve' and check SERVER_URL at the top of this script.")
        }
        int code = response.statusCode()
        if (code == 401 || code == 403)
            fail("the server refused access: ${serverMessage(response)}. " +
                    "Store the token 'her2-qupath serve' printed with set_server_token.groovy " +
                    "(or set the environment variable HER2_QUPATH_TOKEN).")
        if (code >= 400)
            fail("the server could not do it: ${serverMessage(response)}")
        return response
    }

    /** The parsed JSON answer of a request. */
    def json(String method, String path, Map body = null) {
        return new JsonSlurper().parseText(http(method, path, body == null ? null : JsonOutput.toJson(body)).body())
    }

    /** The open image: its data, its location as the server should open it (a file: URI or path),
     *  its pixel size in µm (null: none recorded). */
    Map currentImage() {
        def imageData = getCurrentImageData()
        if (imageData == null) fail('open an image first')
        def server = imageData.getServer()
        def uris = []
        try { uris = server.getURIs() as List } catch (MissingMethodException ignored) { }
        if (uris.size() > 1)
            fail("this image is built from ${uris.size()} files; score one of them on its own")
        def cal = server.getPixelCalibration()
        Double mpp = cal.hasPixelSizeMicrons() ? cal.getAveragedPixelSizeMicrons() : null
        return [data    : imageData, location: uris.size() == 1 ? uris[0].toString() : server.getPath(),
                mpp     : (mpp == null || Double.isNaN(mpp)) ? null : mpp]
    }

    boolean isOurs(obj) {
        def name = obj.getName()
        return name != null && name.startsWith(marker)
    }

    /** The annotations the user selected (never this product's results). */
    List selectedRegions() {
        def selected = getSelectedObjects().findAll { it.isAnnotation() } as List
        def regions = selected.findAll { !isOurs(it) } as List
        if (selected && !regions)
            fail('the selected annotations are results of an earlier run; select the region you drew')
        return regions
    }

    /** QuPath GeoJSON features of the given objects (works for GsonTools' array or collection output). */
    static List featuresOf(Collection objects) {
        def parsed = new JsonSlurper().parseText(GsonTools.getInstance(false).toJson(objects))
        if (parsed instanceof Map) return (parsed.features ?: [parsed]) as List
        return parsed as List
    }

    static List readObjects(String geojson) {
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
            created = json('POST', '/api/v1/jobs', request)
        } catch (InterruptedException e) {
            fail('interrupted while submitting the job; check the server status page for it')
        }
        String id = created.id
        println "her2-qupath: job ${id} submitted to ${serverUrl}"
        long deadline = System.currentTimeMillis() + (long) (maxWaitMinutes * 60000)
        String last = ''
        boolean ended = false  // done, failed or cancelled on the server: nothing to cancel
        try {
            while (true) {
                def job = json('GET', "/api/v1/jobs/${id}")
                String line = "${job.state} ${Math.round(100 * ((job.progress ?: 0) as double))}%" +
                        (job.tiles_total ? " (${job.tiles_done}/${job.tiles_total} tiles)" : '')
                if (line != last) { println "her2-qupath: ${line}"; last = line }
                ended = job.state in ['done', 'failed', 'cancelled']
                if (job.state == 'done') return job
                if (job.state == 'failed') fail("scoring failed on the server: ${job.error ?: 'no reason given'}")
                if (job.state == 'cancelled') fail('the job was cancelled on the server')
                if (System.currentTimeMillis() > deadline)
                    fail("no result after ${maxWaitMinutes} minutes; the job was cancelled " +
                            '(raise MAX_WAIT_MINUTES for very large regions)')
                Thread.sleep((long) (pollSeconds * 1000))
            }
        } catch (InterruptedException e) {
            fail("interrupted: job ${id} was cancelled on the server")
        } finally {
            if (!ended) cancelJob(id)
        }
    }

    /** The object's ID (QuPath 0.4-0.5: getID(), later getId()). */
    static String objectId(obj) {
        for (String method in ['getID', 'getId']) {
            if (obj.metaClass.respondsTo(obj, method)) return obj."${method}"().toString()
        }
        return Integer.toHexString(System.identityHashCode(obj))
    }

    /** The tag that ties results to the region they were scored for ('image': the whole image). */
    static String tagOf(region) {
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
            obj.setName((name == null ? marker : (name.startsWith(marker) ? name : "${marker}: ${name}")) + suffix)
        }
        removeObjects(earlier, true)
        addObjects(objects)
        fireHierarchyUpdate()
        return [removed: earlier.size(), added: objects.size()]
    }

    /** Results need colour deconvolution: an image of type "Not set" becomes Brightfield (H-DAB),
     *  with the stain vectors the server used (QuPath's own stain string, from the summary). */
    static void ensureBrightfield(imageData, Map summary) {
        def type = imageData.getImageType()  // an enum; its text is the display name, "Not set"
        if (type == null || type.name() == 'UNSET') {
            setImageType('BRIGHTFIELD_H_DAB')
            String stains = summary?.provenance?.stain_vectors_qupath
            if (stains) setColorDeconvolutionStains(stains)
            println 'her2-qupath: image type set to Brightfield (H-DAB)' + (stains ? ' with the stain vectors used' : '')
        }
    }

    /**
     * Score each region (null: what `request` makes of it) as its own job and put its results into
     * the image. `request(region)` gives the request's fields beyond the image and the options
     * (rois, he, roi_space); `describe(region)` names it in the log.
     */
    void scoreEach(Map image, List regions, Closure<Map> request, Closure<String> describe) {
        Map last = [:]
        for (region in (regions ?: [null])) {
            Map body = [ihc: image.location, ihc_mpp: image.mpp, options: options] + request(region)
            String what = describe(region)
            println "her2-qupath: scoring ${what} of ${image.location}"
            def job = submitAndWait(body)
            def detections = readObjects(http('GET', "/api/v1/jobs/${job.id}/detections").body())
            def annotations = readObjects(http('GET', "/api/v1/jobs/${job.id}/annotations").body())
            def counts = replaceResults(detections + annotations, region)
            def result = json('GET', "/api/v1/jobs/${job.id}/result")
            def summary = result.summary ?: result
            println "her2-qupath: ${what}: HER2 ${summary.her2_score} (${options.guideline}); added " +
                    "${counts.added} objects, replaced ${counts.removed} earlier ones"
            last = summary as Map
        }
        ensureBrightfield(image.data, last)
    }
}

return Her2Scoring
