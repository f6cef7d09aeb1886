/*
 * her2-qupath: HER2 score of an IHC image with its H&E partner
 * ============================================================
 *
 * Run it on the HER2 IHC image. The H&E image of the same case is found in
 * the project by the pairing rules of `her2-qupath batch` (the server applies
 * PAIR_PATTERN, or PAIR_METADATA, to the project's image names and metadata),
 * or named by HE_IMAGE_NAME. The server registers the two slides and scores
 * the IHC tiles that match:
 *   - annotations selected on the IHC image: each is scored as its own job;
 *   - else the H&E image's annotations of class TUMOR_CLASS (your tumour
 *     outlines on the H&E) are the regions;
 *   - else the whole image.
 * Results are added to the IHC image:
 *   - one detection per tile (or cell), classified "HER2 0" ... "HER2 3+",
 *   - one annotation per scored region with the HER2 score and measurements.
 * Re-running replaces exactly the objects this product added for that region
 * (their names end in "#<region id>"; "#image" for the whole image or the H&E
 * tumour) and never duplicates them; your own objects are never touched.
 * Stopping the script (Kill running script) cancels its job on the server. An
 * image of type "Not set" is set to Brightfield (H-DAB).
 *
 * Start the server first, on the machine that can read the image files:
 *     her2-qupath serve
 * then run this script from Automate > Shared scripts... (or Project scripts...),
 * with her2_qupath_common.groovy (the part it shares with
 * score_selected_annotations.groovy) in the same folder. Works with QuPath 0.4,
 * 0.5 and 0.6.
 */

import static qupath.lib.gui.scripting.QPEx.*

import groovy.transform.Field

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
// How the H&E partner is found, as `her2-qupath batch` pairs images: a regular expression
// over the image names with the named groups case and stain (stain HE, H&E or HES = the
// H&E), or the metadata key that names the case (PAIR_METADATA wins when set).
@Field String PAIR_PATTERN = '(?P<case>.+)_(?P<stain>HE|HER2)'
@Field String PAIR_METADATA = ''
// Or name the H&E image in this project directly ('' = find it by the pairing rule).
@Field String HE_IMAGE_NAME = ''
// Class of your tumour annotations on the H&E image (case ignored; 'Tumor: x' counts too).
@Field String TUMOR_CLASS = 'Tumor'
// With no annotation selected and no tumour annotation on the H&E: true scores the whole image.
@Field boolean WHOLE_IMAGE_IF_NOTHING_SELECTED = true
// Seconds between progress checks, and the longest wait in minutes.
@Field double POLL_SECONDS = 1.0
@Field double MAX_WAIT_MINUTES = 120
// Names of every object this product writes start with this marker.
@Field String MARKER = 'her2-qupath'
// ------------------------------------------------------------------------------

/** An entry's metadata (QuPath 0.4-0.5: getMetadataMap(), later getMetadata()). */
Map entryMetadata(entry) {
    for (String method in ['getMetadataMap', 'getMetadata']) {
        if (entry.metaClass.respondsTo(entry, method)) return (entry."${method}"() ?: [:]).collectEntries {
            k, v -> [(k.toString()): v.toString()] }
    }
    return [:]
}

/** The project entry of the H&E partner, its name and image location. */
Map findPartner(her2) {
    def project = getProject()
    def entry = getProjectEntry()
    if (project == null || entry == null)
        her2.fail('open the IHC image from a QuPath project: the H&E partner is looked up in it')
    def images = project.getImageList()
    String wanted = HE_IMAGE_NAME
    if (!wanted) {
        def body = [ihc   : entry.getImageName(),
                    images: images.collect { [name: it.getImageName(), id: her2.objectId(it), metadata: entryMetadata(it)] }]
        if (PAIR_METADATA) body.pair_metadata = PAIR_METADATA
        else body.pair_pattern = PAIR_PATTERN
        def found = her2.json('POST', '/api/v1/pairing', body)
        if (!found.he)
            her2.fail("no H&E partner for '${entry.getImageName()}': ${found.reason}. " +
                    "Set PAIR_PATTERN or PAIR_METADATA (as for her2-qupath batch), or HE_IMAGE_NAME, at the top of this script")
        wanted = found.he
    }
    def he = images.find { it.getImageName() == wanted }
    if (he == null)
        her2.fail("no image named '${wanted}' in this project; set HE_IMAGE_NAME at the top of this script")
    def uris = []
    try { uris = he.getURIs() as List } catch (MissingMethodException ignored) { uris = he.getServerURIs() as List }
    if (uris.size() != 1)
        her2.fail("the H&E image '${he.getImageName()}' is built from ${uris.size()} files; use a single-file image")
    return [name: he.getImageName(), location: uris[0].toString(), entry: he]
}

/** Whether the object's class is `wanted` (case ignored) or has it as a part ('Tumor: x'). */
boolean hasClass(obj, String wanted) {
    def pathClass = obj.getPathClass()
    if (pathClass == null) return false
    String name = pathClass.toString()
    return name.equalsIgnoreCase(wanted) || name.split(':').any { it.trim().equalsIgnoreCase(wanted) }
}

/** Your tumour annotations on the H&E image (never this product's). */
List tumourAnnotations(her2, heEntry) {
    def data
    try {
        data = heEntry.readImageData()
    } catch (Exception e) {
        her2.fail("cannot read the annotations of the H&E image '${heEntry.getImageName()}' (${e.message})")
    }
    return data.getHierarchy().getAnnotationObjects().findAll { !her2.isOurs(it) && hasClass(it, TUMOR_CLASS) } as List
}

// The shared part, from this script's folder (QuPath passes a script its file as "qupath.script.file").
File common = new File(new File(binding.variables['qupath.script.file'] ?: '.').absoluteFile.parentFile, 'her2_qupath_common.groovy')
if (!common.isFile()) throw new IllegalStateException("her2-qupath: ${common} not found: run this script from its file, with her2_qupath_common.groovy beside it")
def her2 = new GroovyShell(this.class.classLoader).evaluate(common)
        .newInstance(SERVER_URL, GUIDELINE, LEVEL, AGGREGATION, POLL_SECONDS, MAX_WAIT_MINUTES, MARKER)

her2.run { Map image, List regions ->
    def partner = findPartner(her2)
    def tumour = regions ? [] : tumourAnnotations(her2, partner.entry)
    if (!regions && !tumour && !WHOLE_IMAGE_IF_NOTHING_SELECTED)
        her2.fail("select annotations to score, or draw '${TUMOR_CLASS}' annotations on the H&E image " +
                "(or set WHOLE_IMAGE_IF_NOTHING_SELECTED = true)")
    her2.scoreEach(image, regions, { region ->
        def rois = region != null ? her2.featuresOf([region]) : (tumour ? her2.featuresOf(tumour) : null)
        // selected regions were drawn on this (IHC) image: the server maps them to the H&E
        [he: partner.location, rois: rois == null ? null : [type: 'FeatureCollection', features: rois],
         roi_space: region != null ? 'ihc' : 'he']
    }, { region ->
        (region != null ? "region '${region.getName() ?: her2.tagOf(region)}'" :
                (tumour ? "the ${tumour.size()} '${TUMOR_CLASS}' annotation(s) of the H&E image" : 'the whole image')) +
                " with H&E ${partner.name}"
    })
}
